"""Pieces that the experiment configs in configs/ share: the full field list and `smoke`.

A config is data: an `ml_collections.ConfigDict` with every field the trainer reads, set to
the original's hyper-parameters and protocol (docs/protocol.md) by default. Experiment
files change only what differs. Fields:

  seed, batch_pairs (global source+target pairs per step), data_dir, distributed,
            data_shards (slices of the training data, 0: one per process),
            deterministic (deterministic XLA GPU kernels; slower, bitwise repeatable)
  model.*   DeepLabV2 fields (num_classes, blocks, width, stride_on, aspp_branches, bn_mode,
            atrous, remat, remat_policy, dtype)
  init.*    checkpoint (a weights folder from msjax.convert or a run's best/final; '' for the
            original's random initialisation), normalization (used only without a checkpoint)
  source.*, target.*   training streams (dataset, config, split, flip, blur, random_scale,
            crop_size)
  epochs.*  shared (adaptation: both streams turn epochs together after the shorter split's
            batches, each a fresh permutation, as the original zips its two loaders),
            source_only_max_steps (source-only epochs are at most this many steps, the
            original's ITER_MAX; 0: a full pass); docs/data.md
  eval.*    validation during training (dataset, config, split, batch_size, every_steps) and
            `select`, the score that picks WORKDIR/best ('miou', or 'miou13' for 16 classes).
            Source-only runs validate on the source val split, adaptation runs on the
            target's (the original's practice: target labels pick the adapted model)
  loss.*    target ('maxsquare', 'iw_maxsquare', 'entropy', 'hard' or 'none'), lambda_target,
            iw_ratio, threshold (hard pseudo-labels), multi_level (the original's `--multi`:
            lambda_seg * CE(aux) on the source, plus the self-produced guidance on the
            target when adapting), multi_threshold, lambda_seg, ignore_index
  optim.*   lr, momentum, weight_decay, poly_power, iter_max, groups {group: lr multiplier},
            rules ('faithful' or a list of [regex, group])
  train.*   steps, log_every, checkpoint_every, keep_checkpoints, tensorboard, num_images
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from msjax.errors import ConfigError
from msjax.training.optim import ORIGINAL_OPTIM
from msjax.training.step import ORIGINAL_LOSS

EPOCH_STEPS = 2975  # the length of Cityscapes train: one "epoch" of the original
# Source-only pretraining (README of the original: --iter_max 200000 --iter_stop 80000).
SOURCE_STEPS, SOURCE_ITER_MAX = 80_000, 200_000
# train_source.py validates after every "epoch" and caps an epoch at ITER_MAX = 5,000 steps
# (GTA5's 12,403 and SYNTHIA's 9,000 train images both exceed it).
SOURCE_EVAL_EVERY = 5000
SELECT_METRICS = ("miou", "miou13")
# The source model each adaptation variant starts from, as the original's README runs it:
# (source variant, its checkpoint). MaxSquare and IW start from gta5final.pth (or the released
# GTA5_source.pth); IW+Multi from the multi-level source run's gta5best.pth.
SOURCE_MODEL = {"iw_multi": ("source_multi", "best")}
DEFAULT_SOURCE_MODEL = ("source", "final")
SOURCE_VARIANTS = ("source", "source_multi")
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def stream(dataset: str, config: str, split: str = "train") -> ml_collections.ConfigDict:
    """A training stream's fields, with the original's augmentation (flip + blur)."""
    return ml_collections.ConfigDict(
        dict(
            dataset=dataset,
            config=config,
            split=split,
            flip=True,
            blur=True,
            random_scale=config_dict.placeholder(tuple),
            crop_size=config_dict.placeholder(tuple),
        )
    )


def base_config() -> ml_collections.ConfigDict:
    """GTA5 -> Cityscapes with maximum squares, every hyper-parameter as the original."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_pairs = 1
    c.data_dir = ""
    c.distributed = False
    # Slices the training data is cut into; each process reads its own. 0: one per process.
    # A fixed number (a multiple of the process count) makes the data order, and the run,
    # the same on any number of processes.
    c.data_shards = 0
    c.deterministic = False  # XLA's deterministic GPU kernels (docs/reliability.md)
    c.model = ml_collections.ConfigDict(
        dict(
            num_classes=19,
            blocks=(3, 4, 23, 3),
            width=64,
            stride_on="1x1",
            aspp_branches=2,
            bn_mode="per_image",
            atrous="auto",
            remat=False,
            remat_policy="nothing",
            dtype="float32",
        )
    )
    c.init = ml_collections.ConfigDict(dict(checkpoint="", normalization="caffe_bgr"))
    c.source = stream("gta5", "1280x720")
    c.target = stream("cityscapes", "1024x512")
    # The original's data order (docs/data.md): every epoch a fresh permutation of each split;
    # in adaptation both streams restart when the shorter one ends (a zip of two loaders);
    # source-only epochs stop after 5,000 steps (train_source.py's ITER_MAX).
    c.epochs = ml_collections.ConfigDict(dict(shared=True, source_only_max_steps=5000))
    c.eval = ml_collections.ConfigDict(
        dict(
            dataset="cityscapes",
            config="1024x512",
            split="val",
            batch_size=1,
            every_steps=EPOCH_STEPS,
            select="miou",
        )
    )
    c.loss = ml_collections.ConfigDict(dict(ORIGINAL_LOSS))
    c.optim = ml_collections.ConfigDict(dict(ORIGINAL_OPTIM, rules="faithful"))
    c.train = ml_collections.ConfigDict(
        dict(
            steps=10 * EPOCH_STEPS,
            log_every=50,
            checkpoint_every=1000,
            keep_checkpoints=2,
            tensorboard=True,
            num_images=3,
        )
    )
    return c


def set_variant(c: ml_collections.ConfigDict, variant: str) -> None:
    """Applies a variant shared by the experiment configs (after their streams are set).

    maxsquare | iw | iw_multi | minent | hard: adaptation losses. 'iw_multi' also trains and
    validates on 1280x640 target images, as the original's Multi run.
    source | source_multi: the original's source-only pretraining (`train_source.py`): no
    target loss, 80,000 steps of a 200,000-step poly schedule, validation on the SOURCE val
    split every 5,000 steps; 'source_multi' adds lambda_seg * CE(aux) (its `--multi True`),
    which trains the aux head that IW+Multi starts from.
    """
    if variant == "maxsquare":
        c.loss.target = "maxsquare"
    elif variant == "iw":
        c.loss.target = "iw_maxsquare"
    elif variant == "iw_multi":
        c.loss.target = "iw_maxsquare"
        c.loss.multi_level = True
        c.loss.lambda_target = 0.09
        c.target.config = c.eval.config = "1280x640"
    elif variant == "minent":
        c.loss.target = "entropy"
    elif variant == "hard":
        c.loss.target = "hard"
    elif variant in SOURCE_VARIANTS:
        c.loss.target = "none"
        c.loss.multi_level = variant == "source_multi"
        c.train.steps = SOURCE_STEPS
        c.optim.iter_max = SOURCE_ITER_MAX
        c.eval.dataset, c.eval.config, c.eval.split = c.source.dataset, c.source.config, "val"
        c.eval.every_steps = SOURCE_EVAL_EVERY
    else:
        raise ConfigError(f"unknown variant {variant!r}")


def source_model(variant: str) -> tuple[str, str]:
    """(source variant, 'best' or 'final'): the source model an adaptation variant starts from."""
    return SOURCE_MODEL.get(variant, DEFAULT_SOURCE_MODEL)


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


def parse_arg(arg: str | None, variants: tuple[str, ...], default: str) -> tuple[str, bool]:
    """`'iw,smoke'` -> ('iw', True). Raises ConfigError listing the valid arguments."""
    words = [w for w in (arg or "").split(",") if w]
    smoke = "smoke" in words
    rest = [w for w in words if w != "smoke"]
    if len(rest) > 1 or (rest and rest[0] not in variants):
        raise ConfigError(
            f"unknown config argument {arg!r}; valid: one of {', '.join(variants)}, "
            "optionally with ',smoke' (e.g. 'iw,smoke'), or 'smoke' alone"
        )
    return (rest[0] if rest else default), smoke


def use_synthetic(c: ml_collections.ConfigDict, size: str, target: str = "target") -> None:
    """Points both training streams and the evaluation at the generated synthetic data sets.

    Args:
      size: a synthetic size, '128x64', '192x96' or '256x128'.
      target: the target domain (msjax.data.synthetic.DOMAINS): 'target' (the "real"
        style) or a corrupted source-style domain such as 'fog-2'. Evaluation reads the val
        split of the style it read before: the source style where the config validates on
        its source data (source-only runs), else the target domain.
    """
    from msjax.data.synthetic import dataset_config

    on_source = c.eval.dataset == c.source.dataset
    c.source.dataset, c.source.config = "synthetic_source", size
    c.target.dataset, c.target.config = dataset_config(target, size)
    if on_source:
        c.eval.dataset, c.eval.config = c.source.dataset, c.source.config
    else:
        c.eval.dataset, c.eval.config = c.target.dataset, c.target.config
    c.eval.split = "val"


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks an experiment to a CPU smoke test: same losses and policy, tiny everything.

    The model becomes a tiny DeepLabV2 (blocks [1,1,1,1], width 8) from random init, both
    streams read the generated synthetic data sets (no download; prepared on first use),
    and the run lasts two steps with one evaluation.
    """
    c.model.blocks = (1, 1, 1, 1)
    c.model.width = 8
    c.init.checkpoint = ""
    use_synthetic(c, "128x64")
    c.eval.batch_size = 8
    c.eval.every_steps = 2
    c.train.steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
