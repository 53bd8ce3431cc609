"""What reproducing a row takes: its chain of runs, the data they read, the checkpoints scored.

    WORKDIR/data/                    prepared data sets (unless --data-dir)
    WORKDIR/SETTING[_smoke]/STAGE/   one resumable training run per stage (`source`,
                                     `source_multi`, then e.g. `iw_multi` or `nthu-rome_iw`)
    WORKDIR/reports/ROW/             report.md, report.json and
                                     eval/<checkpoint>_<protocol>[_flip]/ (msjax.evaluate's)

Stages live per setting, so rows that need the same source model share it: after
`gta2city:maxsquare`, `gta2city:iw` with the same workdir trains only its adaptation.
`make_plan` builds the plan and `check_plan` checks everything it can before any work;
`make_workdir` then creates the workdir.
"""

from __future__ import annotations

import dataclasses
import os

from msjax import config_checks, configlib, methods, weights
from msjax.errors import ConfigError, WeightsError, WorkdirError
from msjax.reproduction.rows import Row
from msjax.training.loop import eval_split
from msjax.training.stages import Stage

METRIC_NAMES = {"miou": "mIoU", "miou13": "mIoU13 (13 of the 16 classes)"}
INIT_HINT = (
    "the DeepLab ImageNet init converted with `python -m msjax.convert "
    "DeepLab_resnet_pretrained_init-f81d91e8.pth weights/init_{n} --num-classes {n}`"
)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint the report scores.

    Attributes:
      name: 'best' or 'final'.
      path: its weights folder.
      rule: how it was chosen, in words.
      target_labels: whether target labels chose it.
    """

    name: str
    path: str
    rule: str
    target_labels: bool


@dataclasses.dataclass
class Plan:
    """A row's reproduction.

    Attributes:
      row: the paper row.
      workdir, chain_dir, data_dir, report_dir: where everything goes.
      stages: the training runs still part of the chain, in order (the source stage is
        absent when --source-weights gives the source model).
      source: what the adaptation starts from, in words (None for a source row).
      checkpoints: what the report scores, the paper's checkpoint first.
      init, source_weights: the weights the command was given ('' if none).
    """

    row: Row
    workdir: str
    chain_dir: str
    data_dir: str
    report_dir: str
    stages: list[Stage]
    source: str | None
    checkpoints: list[Checkpoint]
    init: str
    source_weights: str

    @property
    def config(self):
        """The config of the row's own run (the chain's last stage)."""
        return self.stages[-1].config


def _abs(path: str | None) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def stage_config(row: Row, method: methods.Method, data_dir: str, init: str):
    """The config of one run of the chain, pointed at the data and its starting weights."""
    c = configlib.load(row.setting.name, row.config_arg(method))
    c.data_dir = data_dir
    c.init.checkpoint = init
    return c


def describe(config, method: methods.Method) -> str:
    """A stage's title: what it trains on, how long, what it validates on."""
    streams = f"{config.source.dataset}/{config.source.size}/{config.source.split}"
    if method.adapting:
        streams += f" -> {config.target.dataset}/{config.target.size}/{config.target.split}"
    return (
        f"{method.title}, {streams}, {config.train.steps} steps of a {config.optim.iter_max}-step "
        f"{config.optim.schedule}, validated on {eval_split(config)} every "
        f"{config.eval.every_steps} steps"
    )


def starts_from(source: methods.Method) -> str:
    """'best' or 'final': the checkpoint of a source method the paper's adaptations use."""
    used = {m.start_from[1] for m in methods.METHODS.values() if m.start_from
            and m.start_from[0] == source.name}  # fmt: skip
    return used.pop() if len(used) == 1 else "final"


def checkpoint_rules(config, folder: str, method: methods.Method) -> list[Checkpoint]:
    """best/ and final/ of the row's run, the paper's first.

    For an adaptation that is best/ (the README evaluates it); for a source run, the one the
    adaptations start from (final/, or best/ of source_multi).
    """
    adapting = method.adapting
    labels = (
        "target labels select it, as in the original, whose README evaluates this checkpoint"
        if adapting
        else "no target label is used"
    )
    rules = {
        "best": f"the highest {METRIC_NAMES[config.eval.select]} on {eval_split(config)} "
        f"(validated every {config.eval.every_steps} steps and at the end); {labels}",
        "final": f"the weights after the last step ({config.train.steps})",
    }
    first = "best" if adapting else starts_from(method)
    if not adapting:
        rules[first] += "; the adaptations start from it"
    order = [first, "final" if first == "best" else "best"]
    return [
        Checkpoint(n, os.path.join(folder, n), rules[n], adapting and n == "best") for n in order
    ]


def make_plan(row: Row, workdir, data_dir=None, init=None, source_weights=None) -> Plan:
    """The stages, folders and checkpoints of reproducing `row` in `workdir`.

    Args:
      row: the paper row.
      workdir: the reproduction's folder.
      data_dir: prepared data (default WORKDIR/data).
      init: the converted ImageNet init the source model starts from.
      source_weights: a converted source model to adapt instead of training one.
    """
    workdir = _abs(workdir)
    data_dir = _abs(data_dir) or os.path.join(workdir, "data")
    init, source_weights = _abs(init), _abs(source_weights)
    chain_dir = os.path.join(workdir, row.setting.name + ("_smoke" if row.smoke else ""))
    stages, source = [], None
    adapting, first = row.method.adapting, row.source_method
    if not (source_weights and adapting):  # check_plan refuses it for a source row
        c = stage_config(row, first, data_dir, init)
        stages.append(Stage(first.name, f"{first.name}: {describe(c, first)}", c))
    if adapting:
        many = len(row.setting.targets) > 1
        name = f"{row.target}_{row.method.name}" if many else row.method.name
        if source_weights:
            start, source = source_weights, f"{source_weights} (given with --source-weights)"
        else:
            start = os.path.join(chain_dir, first.name, row.start_from)
            source = f"{first.name}/{row.start_from} of this chain ({start})"
        c = stage_config(row, row.method, data_dir, start)
        stages.append(Stage(name, f"{name}: {describe(c, row.method)}", c))
    last = stages[-1]
    checkpoints = checkpoint_rules(last.config, os.path.join(chain_dir, last.name), row.method)
    report_dir = os.path.join(workdir, "reports", row.slug)
    return Plan(
        row, workdir, chain_dir, data_dir, report_dir, stages, source, checkpoints,
        init, source_weights,
    )  # fmt: skip


def _check_weights(flag: str, path: str, num_classes: int, hint: str) -> None:
    if os.path.isfile(path):
        raise ConfigError(
            f"{flag} {path} is a file: msjax reads converted weights folders; convert it "
            f"first (python -m msjax.convert {path} OUT_DIR --num-classes {num_classes}) and "
            "pass OUT_DIR."
        )
    if not os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: no such folder; pass {hint}.")
    try:
        found = weights.read_metadata(path).get("num_classes")
    except WeightsError as e:
        raise ConfigError(f"{flag}: {e}") from None
    if found != num_classes:
        raise ConfigError(
            f"{flag} {path} has {found} classes but this row trains {num_classes}; pass {hint}."
        )


def check_plan(plan: Plan, require_init: bool = True) -> None:
    """Checks the arguments and every stage's config before any work.

    `require_init=False` lets the source model start from random weights (a preflight's
    timing needs no trained init).

    Raises:
      ConfigError: a missing or unusable --init / --source-weights, or a bad config field.
    """
    row, n = plan.row, plan.config.model.num_classes
    for stage in plan.stages:
        # Weights an earlier stage writes do not exist yet; --init and --source-weights are
        # checked below, every path again when its stage starts.
        config_checks.check_config(stage.config, check_paths=False)
    init_hint = INIT_HINT.format(n=n)
    if row.smoke and plan.init:
        raise ConfigError(f"--init: {row.name} trains a tiny model from random weights.")
    if plan.source_weights and plan.init:
        raise ConfigError(
            "--init and --source-weights exclude each other: with --source-weights no source "
            "model is trained, so --init would not be used. Pass one of them."
        )
    if plan.source_weights and not row.method.adapting:
        raise ConfigError(
            f"--source-weights: {row.name} is the source-only row, it trains the source model "
            "itself; score given weights with python -m msjax.evaluate."
        )
    needs_init = require_init and not row.smoke and plan.stages[0].name in methods.source_only()
    if needs_init and not plan.init:
        raise ConfigError(
            f"--init is required to train the source model of {row.name}: {init_hint} "
            "(or give a converted source model with --source-weights)."
        )
    if plan.init:
        _check_weights("--init", plan.init, n, init_hint)
    if plan.source_weights:
        _check_weights("--source-weights", plan.source_weights, n, f"a {n}-class source model")


def make_workdir(plan: Plan) -> None:
    """Creates the workdir (after every check), or raises WorkdirError saying why not."""
    try:
        os.makedirs(plan.workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir {plan.workdir} cannot be created: {e}") from None
