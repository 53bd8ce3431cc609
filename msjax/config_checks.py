"""Checks of a whole experiment config before any work: every field's type and range.

`check_config(config)` raises `msjax.errors.ConfigError` naming the first field at fault,
its value and what is allowed, so that a run never starts (or, worse, "succeeds") with a
value that cannot work: a non-positive number of steps, a non-finite loss weight, an
unknown BN mode. Checks that need the data or the devices (prepared data sets, the device
count) happen where those are known.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from msjax.data.labels import VALID_NUM_CLASSES
from msjax.data.normalize import NORMALIZATIONS
from msjax.errors import ConfigError
from msjax.models import ATROUS_IMPLS, BN_MODES, STRIDE_PLACEMENTS
from msjax.training.step import TARGET_LOSS_NAMES

DTYPES = ("float32", "bfloat16", "float16", "float64")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int) -> Callable[[Any], str | None]:
    """A check: an integer >= low."""
    return lambda v: None if _is_int(v) and v >= low else f"an integer >= {low}"


def number(low: float, high: float = math.inf, *, low_open=False, high_open=False):
    """A check: a finite number in [low, high] (or open at either end)."""

    def check(v):
        ok = _is_number(v) and math.isfinite(v)
        ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        return None if ok else f"a finite number in {lo}{low}, {high}{hi}"

    return check


def one_of(*allowed) -> Callable[[Any], str | None]:
    """A check: one of the listed values."""
    return lambda v: None if v in allowed else f"one of {list(allowed)}"


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def positive_pair_or_none(v) -> str | None:
    if v is None:
        return None
    ok = isinstance(v, tuple | list) and len(v) == 2 and all(_is_number(x) and x > 0 for x in v)
    return None if ok else "None or two positive numbers"


def blocks(v) -> str | None:
    ok = isinstance(v, tuple | list) and len(v) == 4 and all(_is_int(b) and b >= 1 for b in v)
    return None if ok else "four positive block counts, e.g. (3, 4, 23, 3)"


# field -> check; a check returns None when the value is fine, else what is allowed.
FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": integer(0),
    "batch_pairs": integer(1),
    "data_shards": integer(0),
    "distributed": boolean,
    "deterministic": boolean,
    "model.num_classes": one_of(*VALID_NUM_CLASSES),
    "model.blocks": blocks,
    "model.width": integer(1),
    "model.stride_on": one_of(*STRIDE_PLACEMENTS),
    "model.aspp_branches": one_of(2, 4),
    "model.bn_mode": one_of(*BN_MODES),
    "model.atrous": one_of(*ATROUS_IMPLS),
    "model.remat": boolean,
    "model.dtype": one_of(*DTYPES),
    "init.normalization": one_of(*NORMALIZATIONS),
    "loss.target": one_of(*TARGET_LOSS_NAMES),
    "loss.lambda_target": number(0.0),
    "loss.iw_ratio": number(0.0, 1.0),
    "loss.threshold": number(0.0, 1.0),
    "loss.multi_level": boolean,
    "loss.multi_threshold": number(0.0, 1.0),
    "loss.lambda_seg": number(0.0),
    "loss.ignore_index": integer(0),
    "optim.lr": number(0.0, low_open=True),
    "optim.momentum": number(0.0, 1.0, high_open=True),
    "optim.weight_decay": number(0.0),
    "optim.poly_power": number(0.0),
    "optim.iter_max": integer(1),
    "train.steps": integer(1),
    "train.log_every": integer(1),
    "train.checkpoint_every": integer(1),
    "train.keep_checkpoints": integer(1),
    "train.tensorboard": boolean,
    "train.num_images": integer(0),
    "eval.batch_size": integer(1),
    "eval.every_steps": integer(1),
}
for _stream in ("source", "target"):
    FIELD_CHECKS.update({
        f"{_stream}.flip": boolean,
        f"{_stream}.blur": boolean,
        f"{_stream}.random_scale": positive_pair_or_none,
        f"{_stream}.crop_size": positive_pair_or_none,
        f"{_stream}.shuffle_buffer": integer(1),
    })  # fmt: skip


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(config) -> None:
    """Raises ConfigError for the first field whose value cannot work.

    Args:
      config: an experiment ConfigDict (msjax.configlib fields).
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
