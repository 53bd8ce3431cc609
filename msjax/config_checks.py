"""Checks of a whole experiment config before any work: every field's type and range.

`check_config(config)` raises `msjax.errors.ConfigError` naming the first field at fault,
its value and what is allowed, so that a run never starts (or, worse, "succeeds") with a
value that cannot work: a non-positive number of steps, a non-finite loss weight, an
unknown BN mode or data set, a data dir that is a file, weights that are not a weights
folder. Every field of `msjax.configlib.base_config` has a check (`checked_fields`; a test
keeps it so). Checks that need the prepared data or the devices (splits, example counts,
the device count) happen where those are known.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from msjax import methods
from msjax.configlib import SELECT_METRICS
from msjax.data import datasets
from msjax.data.labels import IGNORE, VALID_NUM_CLASSES
from msjax.data.normalize import NORMALIZATIONS
from msjax.errors import ConfigError, DataError
from msjax.models import ATROUS_IMPLS, BN_MODES, REMAT_POLICIES, STRIDE_PLACEMENTS
from msjax.optim import SCHEDULES

DTYPES = ("float32", "bfloat16", "float16", "float64")
# Upper bounds of the fields that set a size, checked before any work: a mistyped value is
# a message, not a process the kernel kills for its memory. Each is far above what the
# paper's experiments use.
MAX_WIDTH = 256  # the original's ResNet-101 is 64 wide
MAX_BLOCKS = 64  # per stage; ResNet-101 has (3, 4, 23, 3)
MAX_EVAL_BATCH = 64
MAX_CROP_PIXELS = 4096 * 2048
MAX_SCALE = 4.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    """A check: an integer >= low (and <= high)."""
    if high is None:
        return lambda v: None if _is_int(v) and v >= low else f"an integer >= {low}"
    return lambda v: None if _is_int(v) and low <= v <= high else f"an integer in [{low}, {high}]"


def number(low: float, high: float = math.inf, *, low_open=False, high_open=False):
    """A check: a finite number in [low, high] (or open at either end)."""

    def check(v):
        ok = _is_number(v) and math.isfinite(v)
        ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        return None if ok else f"a finite number in {lo}{low}, {high}{hi}"

    return check


def check_fields(section, checks: dict[str, Callable[[Any], str | None]], name: str) -> None:
    """Raises ConfigError 'config.NAME.FIELD=VALUE: must be ...' for the first field of
    `section` (a config section, e.g. config.demo) that its check refuses."""
    for field, check in checks.items():
        value = section.get(field)
        allowed = check(value)
        if allowed is not None:
            raise ConfigError(f"config.{name}.{field}={value!r}: must be {allowed}.")


def one_of(*allowed) -> Callable[[Any], str | None]:
    """A check: one of the listed values."""
    return lambda v: None if v in allowed else f"one of {list(allowed)}"


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def seed(v) -> str | None:
    """An integer in [0, 2**62): seeds feed jax.random.key (int64) and seed + 1 is used too."""
    return None if _is_int(v) and 0 <= v < 2**62 else "an integer in [0, 2**62)"


def text(v) -> str | None:
    return None if isinstance(v, str) else "a string"


def name(v) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a non-empty name"


def scale_range_or_none(v) -> str | None:
    """None, or (min, max) finite scale factors with 0 < min <= max."""
    if v is None:
        return None
    ok = isinstance(v, tuple | list) and len(v) == 2
    ok = ok and all(_is_number(x) and math.isfinite(x) and x > 0 for x in v) and v[0] <= v[1]
    ok = ok and v[1] <= MAX_SCALE
    return None if ok else f"None or (min, max) scale factors with 0 < min <= max <= {MAX_SCALE}"


def size_or_none(v) -> str | None:
    """None, or (width, height) in whole pixels >= 1."""
    if v is None:
        return None
    ok = isinstance(v, tuple | list) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)
    ok = ok and v[0] * v[1] <= MAX_CROP_PIXELS
    return None if ok else (
        "None or (width, height) in whole pixels, e.g. (1280, 640), of at most "
        f"{MAX_CROP_PIXELS:,} pixels (4096x2048)"
    )  # fmt: skip


def optimizer_rules(v) -> str | None:
    """'faithful', or a list of [regex, group] pairs (each regex must compile)."""
    if v == "faithful":
        return None
    allowed = "'faithful' or a list of [regex, group] pairs"
    if not isinstance(v, tuple | list) or not v:
        return allowed
    for rule in v:
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            return allowed
        if not all(isinstance(x, str) for x in rule):
            return allowed
        try:
            re.compile(rule[0])
        except re.error as e:
            return f"{allowed}; {rule[0]!r} is not a regular expression ({e})"
    return None


def blocks(v) -> str | None:
    ok = isinstance(v, tuple | list) and len(v) == 4
    ok = ok and all(_is_int(b) and 1 <= b <= MAX_BLOCKS for b in v)
    return None if ok else f"four block counts in [1, {MAX_BLOCKS}], e.g. (3, 4, 23, 3)"


# field -> check; a check returns None when the value is fine, else what is allowed.
FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "method": one_of(*methods.METHODS),
    "seed": seed,
    "batch_pairs": integer(1),
    "data_dir": text,
    "data_shards": integer(0),
    "distributed": boolean,
    "deterministic": boolean,
    "model.num_classes": one_of(*VALID_NUM_CLASSES),
    "model.blocks": blocks,
    "model.width": integer(1, MAX_WIDTH),
    "model.stride_on": one_of(*STRIDE_PLACEMENTS),
    "model.aspp_branches": one_of(2, 4),
    "model.bn_mode": one_of(*BN_MODES),
    "model.atrous": one_of(*ATROUS_IMPLS),
    "model.remat": boolean,
    "model.remat_policy": one_of(*REMAT_POLICIES),
    "model.dtype": one_of(*DTYPES),
    "init.checkpoint": text,
    "init.normalization": one_of(*NORMALIZATIONS),
    "loss.lambda_target": number(0.0),
    "loss.iw_ratio": number(0.0, 1.0),
    "loss.threshold": number(0.0, 1.0),
    "loss.multi_threshold": number(0.0, 1.0),
    "loss.lambda_seg": number(0.0),
    # Prepared labels store "no label" as 255 (msjax.data.labels): another value would
    # silently train on unlabelled pixels, or ignore a real class.
    "loss.ignore_index": one_of(IGNORE),
    "optim.lr": number(0.0, low_open=True),
    "optim.momentum": number(0.0, 1.0, high_open=True),
    "optim.weight_decay": number(0.0),
    "optim.schedule": one_of(*SCHEDULES),
    "optim.poly_power": number(0.0),
    "optim.iter_max": integer(1),
    "optim.rules": optimizer_rules,
    "train.steps": integer(1),
    "train.log_every": integer(1),
    "train.checkpoint_every": integer(1),
    "train.keep_checkpoints": integer(1),
    "train.tensorboard": boolean,
    "train.num_images": integer(0),
    "eval.dataset": one_of(*datasets.DATASETS),
    "eval.size": name,
    "eval.split": name,
    "eval.batch_size": integer(1, MAX_EVAL_BATCH),
    "eval.every_steps": integer(1),
    "eval.select": one_of(*SELECT_METRICS),
    "epochs.shared": boolean,
    "epochs.source_only_max_steps": integer(0),
}
for _stream in ("source", "target"):
    FIELD_CHECKS.update({
        f"{_stream}.dataset": one_of(*datasets.DATASETS),
        f"{_stream}.size": name,
        f"{_stream}.split": name,
        f"{_stream}.flip": boolean,
        f"{_stream}.blur": boolean,
        f"{_stream}.random_scale": scale_range_or_none,
        f"{_stream}.crop_size": size_or_none,
    })  # fmt: skip
# Fields checked by code below rather than by one function.
OTHER_CHECKED = ("optim.groups",)


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(config, check_paths: bool = True) -> None:
    """Raises ConfigError (or a UserError naming the field) for the first value that cannot work.

    Args:
      config: an experiment ConfigDict (msjax.configlib fields).
      check_paths: also check that config.data_dir is not a file and that
        config.init.checkpoint is a weights folder (off for configs of stages whose
        weights an earlier stage will write).
    """
    for field, check in FIELD_CHECKS.items():
        try:
            value = _get(config, field)
        except (KeyError, AttributeError):
            raise ConfigError(f"config.{field} is missing from the config.") from None
        allowed = check(value)
        if allowed is not None:
            raise ConfigError(f"config.{field}={value!r}: must be {allowed}.")
    for name, multiplier in dict(config.optim.groups).items():
        if number(0.0)(multiplier) is not None:
            raise ConfigError(
                f"config.optim.groups.{name}={multiplier!r}: a learning-rate multiplier must "
                "be a finite number >= 0."
            )
    if config.model.dtype == "float64":
        check_float64()
    if config.eval.select == "miou13" and config.model.num_classes != 16:
        raise ConfigError(
            f"config.eval.select='miou13' needs 16 classes (the 13 of 16 SYNTHIA classes), "
            f"but config.model.num_classes={config.model.num_classes}; use 'miou'."
        )
    if config.train.steps > config.optim.iter_max:
        raise ConfigError(
            f"config.train.steps={config.train.steps} exceeds config.optim.iter_max="
            f"{config.optim.iter_max}: the poly schedule's learning rate is 0 from iter_max on, "
            "so the steps after it would not train. Raise config.optim.iter_max or lower "
            "config.train.steps."
        )
    check_data_names(config)
    if check_paths:
        check_config_paths(config)


def check_float64() -> None:
    """Raises ConfigError unless JAX's 64-bit mode is on (without it, float64 is float32)."""
    import jax

    if not jax.config.jax_enable_x64:
        raise ConfigError(
            "config.model.dtype='float64': JAX computes in float32 unless its 64-bit mode is "
            "on, so the run would train in float32. Start it with JAX_ENABLE_X64=1 in the "
            "environment to train in float64 (slow), or use float32 or bfloat16."
        )


def check_data_names(config) -> None:
    """Raises ConfigError for a size that a stream's or the evaluation's data set lacks."""
    for section in ("source", "target", "eval"):
        fields = config[section]
        try:
            datasets.check_size(datasets.get(fields.dataset), fields.size)
        except DataError as e:
            raise ConfigError(f"config.{section}.size: {e}") from None


def check_config_paths(config) -> None:
    """Raises a UserError naming config.data_dir or config.init.checkpoint if unusable."""
    import os

    from msjax import weights
    from msjax.errors import WeightsError

    data_dir = os.path.expanduser(config.data_dir)
    if config.data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ConfigError(
            f"config.data_dir={config.data_dir} is a file; give the folder the data sets "
            "were prepared into."
        )
    if config.init.checkpoint:
        try:
            weights.read_metadata(os.path.expanduser(config.init.checkpoint))
        except WeightsError as e:
            raise WeightsError(f"config.init.checkpoint: {e}") from None


def check_demo(demo) -> None:
    """Raises ConfigError naming the config.demo field at fault (stage configs: run_stages)."""
    positive = integer(1)
    check_fields(
        demo,
        {"source_steps": positive, "adapt_steps": positive,
         "adapt_lr": number(0.0, low_open=True)},
        "demo",
    )  # fmt: skip
    for name in demo.methods:
        methods.get(name, "config.demo.methods")


def check_study(study) -> None:
    """Raises ConfigError naming the config.study field at fault."""
    for method in study.methods:
        methods.get(method, "config.study.methods")
    targets = [n for n, d in datasets.DATASETS.items() if d.generated and n != "synthetic-source"]
    for shift in study.shifts:
        if shift not in targets:
            raise ConfigError(
                f"config.study.shifts: {shift!r} is not a generated target data set; "
                f"valid: {targets}."
            )
    if not study.seeds or not all(_is_int(s) and s >= 0 for s in study.seeds):
        raise ConfigError(f"config.study.seeds={study.seeds!r}: must be integers >= 0.")
    if not study.lambdas or not all(_is_number(x) and x > 0 for x in study.lambdas):
        raise ConfigError(f"config.study.lambdas={study.lambdas!r}: must be numbers > 0.")
    for extra in study.extra:
        ok = len(extra) == 2 and extra[0] in methods.METHODS and extra[0] != "control"
        if not (ok and _is_number(extra[1]) and extra[1] > 0):
            raise ConfigError(
                f"config.study.extra: {extra!r} is not a (method, lambda > 0) pair of a "
                f"method other than the control; methods: {list(methods.METHODS)}."
            )
    positive = integer(1)
    check_fields(
        study,
        {"source_steps": positive, "adapt_steps": positive, "eval_every": positive,
         "adapt_lr": number(0.0, low_open=True)},
        "study",
    )  # fmt: skip


def check_devices(config, mesh) -> None:
    """Raises ConfigError unless the batch and the data shards fit the devices and processes."""
    import jax

    from msjax import sharding

    sharding.check_global_batch(config.batch_pairs, mesh)
    shards = config.data_shards or jax.process_count()
    if shards < 1 or shards % jax.process_count() or config.batch_pairs % shards:
        raise ConfigError(
            f"config.data_shards={config.data_shards} (so {shards} shards) must be a positive "
            f"multiple of the number of processes ({jax.process_count()}) that divides "
            f"config.batch_pairs={config.batch_pairs}."
        )


def check_data_dir(config, path: str, generated: bool) -> None:
    """Raises ConfigError unless config.data_dir (`path`, absolute) can hold the run's data.

    Generated data is prepared on first use (in WORKDIR/data without a data_dir); read data
    must have been prepared with `msjax.prepare`.
    """
    import os

    if generated:
        return
    if not path:
        raise ConfigError(
            "config.data_dir is empty. Prepare the data sets once with `python -m msjax.prepare "
            "DATASET RAW_DIR --data-dir DATA` and pass --config.data_dir=DATA."
        )
    if not os.path.isdir(path):
        raise ConfigError(
            f"config.data_dir={config.data_dir} does not exist. Prepare the data sets there "
            f"with `python -m msjax.prepare DATASET RAW_DIR --data-dir {path}`."
        )


def checked_fields() -> set[str]:
    """Every config field some check covers (a test compares it with the config's fields)."""
    return set(FIELD_CHECKS) | set(OTHER_CHECKED)
