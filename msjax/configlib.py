"""What the experiment configs in configs/ share: the fields, the paper's settings, methods.

A config is data: an `ml_collections.ConfigDict` with every field the trainer reads
(`base_config`, one comment per field; `msjax.config_checks` checks each), set to the
original's hyper-parameters and protocol (docs/protocol.md). A paper setting
(`Setting`: a labelled source, its targets, the classes) and a method of `msjax.methods`
make one run's config (`experiment`), which `configs/SETTING.py:[TARGET,]METHOD[,smoke]`
returns; `,smoke` shrinks any of them to a CPU run on generated data.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from msjax import methods
from msjax.data import datasets
from msjax.errors import ConfigError
from msjax.optim import ORIGINAL_OPTIM

EPOCH_STEPS = 2975  # the length of Cityscapes train: one "epoch" of the original
# Source-only pretraining (README of the original: --iter_max 200000 --iter_stop 80000).
SOURCE_STEPS, SOURCE_ITER_MAX = 80_000, 200_000
# train_source.py validates after every "epoch", an epoch being at most 5,000 steps.
SOURCE_EPOCH_CAP = 5000
SELECT_METRICS = ("miou", "miou13")
TINY_MODEL = dict(blocks=(1, 1, 1, 1), width=8)  # the smoke runs' DeepLabV2
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# The original's loss hyper-parameters (GTA5 -> Cityscapes): the fields of config.loss.
ORIGINAL_LOSS = dict(
    lambda_target=0.1,
    iw_ratio=0.2,
    threshold=0.95,  # hard pseudo-labels: pixels with max p <= threshold are ignored
    multi_threshold=0.95,  # multi-level guidance: kept where either head's max p > it
    lambda_seg=0.1,  # weight of the aux-head CE terms
    ignore_index=255,
)


def stream(dataset: str, size: str, split: str = "train") -> ml_collections.ConfigDict:
    """A training stream's fields, with the original's augmentation (flip + blur)."""
    return ml_collections.ConfigDict(
        dict(
            dataset=dataset,  # a data set of msjax.data.datasets
            size=size,  # its prepared size
            split=split,
            flip=True,
            blur=True,
            random_scale=config_dict.placeholder(tuple),  # (min, max) or None (original)
            crop_size=config_dict.placeholder(tuple),  # (width, height) or None (original)
        )
    )


# The faithful DeepLabV2-ResNet-101 (msjax.models.DeepLabV2 fields).
ORIGINAL_MODEL = dict(
    num_classes=19,
    blocks=(3, 4, 23, 3),
    width=64,
    stride_on="1x1",  # '1x1' (Caffe weights, faithful) or '3x3' (torchvision)
    aspp_branches=2,  # 2: the original's early return; 4: all four summed
    bn_mode="per_image",  # 'per_image' (faithful), 'batch' or 'frozen'
    atrous="auto",  # 'native', 'space_to_batch' or 'auto' (per platform)
    remat=False,
    remat_policy="nothing",  # with remat: what each block saves ('nothing', 'convs')
    dtype="float32",  # compute dtype: 'float32' or 'bfloat16'
)


def base_config() -> ml_collections.ConfigDict:
    """GTA5 -> Cityscapes with maximum squares, every hyper-parameter as the original."""
    c = ml_collections.ConfigDict()
    c.method = "maxsquare"  # a method of msjax.methods
    c.seed = 0
    c.batch_pairs = 1  # global source+target pairs per step
    c.data_dir = ""  # where msjax.prepare put the data ('': WORKDIR/data for generated data)
    c.distributed = False  # join a multi-host job (jax.distributed.initialize)
    # Slices of the training data, each process reading its own (0: one per process); a fixed
    # number (a multiple of the process count) keeps the data order on any number of them.
    c.data_shards = 0
    c.deterministic = False  # XLA's deterministic GPU kernels (docs/reliability.md)
    c.model = ml_collections.ConfigDict(dict(ORIGINAL_MODEL))
    # A weights folder (msjax.convert, or a run's best/ or final/); '': random init, whose
    # input normalisation is `normalization`.
    c.init = ml_collections.ConfigDict(dict(checkpoint="", normalization="caffe_bgr"))
    c.source = stream("gta5", "1280x720")
    c.target = stream("cityscapes", "1024x512")
    # The original's data order (docs/data.md): every epoch a fresh permutation of each split;
    # in adaptation both streams restart when the shorter one ends (a zip of two loaders);
    # source-only epochs stop after source_only_max_steps (0: a full pass).
    c.epochs = ml_collections.ConfigDict(dict(shared=True, source_only_max_steps=SOURCE_EPOCH_CAP))
    # Validation during training; `select` is the score that picks WORKDIR/best. Source-only
    # runs validate on the source's val split, adaptation runs on the target's.
    c.eval = ml_collections.ConfigDict(
        dict(
            dataset="cityscapes",
            size="1024x512",
            split="val",
            batch_size=1,
            every_steps=EPOCH_STEPS,
            select="miou",  # 'miou', or 'miou13' for 16 classes
        )
    )
    c.loss = ml_collections.ConfigDict(dict(ORIGINAL_LOSS))
    # rules: 'faithful' or a list of [regex, group]; groups: {group: lr multiplier}.
    c.optim = ml_collections.ConfigDict(dict(ORIGINAL_OPTIM, rules="faithful"))
    c.train = ml_collections.ConfigDict(
        dict(
            steps=10 * EPOCH_STEPS,
            log_every=50,
            checkpoint_every=1000,
            keep_checkpoints=2,
            tensorboard=True,
            num_images=3,  # validation pictures written to TensorBoard
        )
    )
    return c


@dataclasses.dataclass(frozen=True)
class Setting:
    """One of the paper's settings.

    Attributes:
      name: its config file (configs/NAME.py) and the first part of its rows' names.
      source: the labelled source data set.
      targets: the target data sets; a setting with several (the NTHU cities) takes one in
        its argument.
      num_classes: classes of its models.
      select: the score that picks best/ ('miou13' for SYNTHIA's 16 classes).
      threshold: confidence threshold of the hard-label and multi-level masks.
    """

    name: str
    source: str
    targets: tuple[str, ...]
    num_classes: int
    select: str = "miou"
    threshold: float = 0.95

    def parse_arg(self, arg: str | None) -> tuple[str, methods.Method, bool]:
        """'rome,iw,smoke' -> (target, method, smoke); ConfigError listing what is valid."""
        words = [w for w in (arg or "").split(",") if w]
        smoke = "smoke" in words
        targets = [w for w in words if self._target(w)]
        rest = [w for w in words if w != "smoke" and not self._target(w)]
        name = rest[0] if rest else "maxsquare"
        many = len(self.targets) > 1
        adapting = name in methods.METHODS and methods.METHODS[name].adapting
        bad = len(rest) > 1 or len(targets) > 1 or name not in methods.METHODS
        if bad or (many and not targets and adapting):
            choice = f"one of {', '.join(self.target_words())}, " if many else ""
            raise ConfigError(
                f"{self.name}: unknown config argument {arg!r}; valid: {choice}a method of "
                f"{', '.join(methods.METHODS)} (default maxsquare), ',smoke' for a CPU run "
                f"(e.g. {'rome,iw' if many else 'iw'} or {'rome,' if many else ''}iw,smoke)."
            )
        target = self._target(targets[0]) if targets else self.targets[0]
        return target, methods.METHODS[name], smoke

    def target_words(self) -> list[str]:
        """How an argument names each target: 'rome' for nthu-rome."""
        return [t.rsplit("-", 1)[-1] for t in self.targets]

    def _target(self, word: str) -> str | None:
        return dict(zip(self.target_words(), self.targets, strict=True)).get(word)


def experiment(setting: Setting, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of `configs/SETTING.py:ARG`: one method on one target of the setting.

    A source-only method's config is the same for every target (one source model serves
    them all): it trains and validates on the source only.
    """
    target, method, smoke = setting.parse_arg(arg)
    c = base_config()
    c.model.num_classes = setting.num_classes
    c.source.dataset, c.source.size = setting.source, datasets.get(setting.source).sizes[0]
    target = target if method.adapting else setting.targets[0]
    c.target.dataset, c.target.size = target, datasets.get(target).sizes[0]
    c.eval.dataset, c.eval.size = target, c.target.size
    c.eval.split = datasets.get(target).eval_split
    c.eval.select = setting.select
    c.loss.threshold = c.loss.multi_threshold = setting.threshold
    apply_method(c, method)
    if smoke:
        apply_smoke(c)
    return c


def apply_method(c: ml_collections.ConfigDict, method: methods.Method) -> None:
    """Sets `method` on a config whose streams are set: its lambda, sizes and protocol.

    A source-only method follows the original's source pretraining (`train_source.py`): no
    target loss, 80,000 steps of a 200,000-step poly schedule, validation on the SOURCE's
    val split after every epoch (of at most 5,000 steps).
    """
    c.method = method.name
    c.loss.lambda_target = method.lambda_target(c.loss.lambda_target)
    if method.target_size:
        datasets.check_size(datasets.get(c.target.dataset), method.target_size)
        c.target.size = c.eval.size = method.target_size
    if not method.adapting:
        c.train.steps = SOURCE_STEPS
        c.optim.iter_max = SOURCE_ITER_MAX
        c.eval.dataset, c.eval.size, c.eval.split = c.source.dataset, c.source.size, "val"
        train = _train_examples(c.source.dataset)
        c.eval.every_steps = min(train, SOURCE_EPOCH_CAP) if train else SOURCE_EPOCH_CAP


def _train_examples(dataset: str) -> int | None:
    """Examples in the original's train list of a read data set (None without one)."""
    from msjax.data import split_lists

    entry = datasets.get(dataset)
    if entry.generated or "train" not in entry.raw.lists:
        return None
    return len(split_lists.original_lists(entry)["train"].entries)


def use_synthetic(c: ml_collections.ConfigDict, size: str, target: str = "synthetic-target"):
    """Points both training streams and the evaluation at generated data sets.

    Args:
      size: a synthetic size, '128x64', '192x96' or '256x128'.
      target: the target data set: 'synthetic-target' (the "real" style) or a corrupted
        source-style one such as 'synthetic-fog-2'. The evaluation reads the val split of
        the side it read before: the source where the config validates on its source data
        (source-only runs), else the target.
    """
    on_source = c.eval.dataset == c.source.dataset
    c.source.dataset, c.source.size = "synthetic-source", size
    c.target.dataset, c.target.size = target, size
    side = c.source if on_source else c.target
    c.eval.dataset, c.eval.size, c.eval.split = side.dataset, size, "val"


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks an experiment to a CPU smoke test: same losses and policy, tiny everything.

    The model becomes a tiny DeepLabV2 (blocks [1,1,1,1], width 8) from random init, both
    streams read generated data (no download; prepared on first use), and the run lasts
    two steps with one evaluation.
    """
    c.model.update(TINY_MODEL)
    c.init.checkpoint = ""
    use_synthetic(c, "128x64")
    c.eval.batch_size = 8
    c.eval.every_steps = 2
    c.train.steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2


def parse_words(arg: str | None, valid: tuple[str, ...], default: str) -> tuple[str, bool]:
    """`'pilot,smoke'` -> ('pilot', True) for configs with their own words (demo, study)."""
    words = [w for w in (arg or "").split(",") if w]
    smoke = "smoke" in words
    rest = [w for w in words if w != "smoke"]
    if len(rest) > 1 or (rest and rest[0] not in valid):
        choice = f"one of {', '.join(valid)}, optionally with ',smoke', or " if valid else ""
        raise ConfigError(f"unknown config argument {arg!r}; valid: {choice}'smoke'.")
    return (rest[0] if rest else default), smoke


def load_module(name: str):
    """The experiment config module configs/NAME.py.

    Raises:
      ConfigError: there is no such config file (the message lists the ones there are).
    """
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        names = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py"))
        raise ConfigError(f"no config {name!r} in {CONFIGS_DIR}; configs: {', '.join(names)}")
    spec = importlib.util.spec_from_file_location(f"msjax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/NAME.py:ARG` as `--config` reads it: the module's get_config(arg)."""
    return load_module(name).get_config(arg)
