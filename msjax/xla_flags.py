"""XLA compiler flags msjax sets before JAX starts a backend.

XLA reads the XLA_FLAGS environment variable once, when the first backend starts; a flag
added later is silently ignored. `import msjax` therefore applies msjax's default flags
(`DEFAULT_FLAGS`) at once, before any computation can have started a backend, unless the
environment variable MSJAX_XLA_DEFAULTS=0 opts out. The user's own XLA_FLAGS are kept.

The one default flag keeps `jax.lax.optimization_barrier` alive on XLA:CPU, whose pipeline
otherwise expands barriers away before fusion (the pass `cse_barrier_expander`). The
ResNet blocks put a barrier on each block's output (`msjax.models.layers.materialize`):
without it XLA:CPU fuses the elementwise residual path of consecutive blocks into one loop
per consumer and recomputes every earlier block's BatchNorm, addition and ReLU each time
(quadratic in depth: 23 blocks in layer3). Measured on the CPU train step at 256x512, in
one invocation: 5.12 s per iteration with the flag off, 4.51 s with it, same numbers
(README.md, "Performance"). msjax inserts barriers on CPU only; on other backends the flag
can at most keep the barriers that `jax.checkpoint` (remat) places, which is what those
barriers are for.
"""

from __future__ import annotations

import os
import sys

OPT_OUT_VARIABLE = "MSJAX_XLA_DEFAULTS"
DISABLE_PASSES = "--xla_disable_hlo_passes"
DEFAULT_FLAGS = (f"{DISABLE_PASSES}=cse_barrier_expander",)


class BackendStartedError(RuntimeError):
    """A flag was requested after JAX started a backend, so XLA would ignore it."""


def backend_started() -> bool:
    """Whether JAX has started a backend (after which XLA_FLAGS changes have no effect)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def merge_flags(existing: str, flag: str) -> str:
    """`existing` XLA_FLAGS with `flag` added; a repeated list flag gets its values merged.

    `--xla_disable_hlo_passes=a` plus `--xla_disable_hlo_passes=b` gives one
    `--xla_disable_hlo_passes=a,b` (XLA keeps only the last of two occurrences). Any other
    flag already present, with whatever value, is left as the user set it.
    """
    name, _, value = flag.partition("=")
    parts = existing.split()
    for i, part in enumerate(parts):
        part_name, _, part_value = part.partition("=")
        if part_name != name:
            continue
        if name == DISABLE_PASSES:
            values = [v for v in part_value.split(",") if v]
            for v in value.split(","):
                if v not in values:
                    values.append(v)
            parts[i] = f"{name}={','.join(values)}"
        return " ".join(parts)
    return " ".join([*parts, flag])


def add_xla_flags(*flags: str) -> None:
    """Adds `flags` to XLA_FLAGS; raises BackendStartedError if XLA would ignore them."""
    current = os.environ.get("XLA_FLAGS", "")
    updated = current
    for flag in flags:
        updated = merge_flags(updated, flag)
    if updated == current:
        return
    if backend_started():
        raise BackendStartedError(
            f"JAX has already started its backend, so XLA would ignore {' '.join(flags)}: "
            "set XLA_FLAGS before starting Python instead."
        )
    os.environ["XLA_FLAGS"] = updated


def apply_defaults() -> bool:
    """Adds `DEFAULT_FLAGS` unless opted out or too late; returns whether they are in effect."""
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    try:
        add_xla_flags(*DEFAULT_FLAGS)
    except BackendStartedError:
        # Imported after a computation: msjax runs correctly, only slower on CPU.
        return False
    return True
