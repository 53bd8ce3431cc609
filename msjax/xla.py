"""XLA settings msjax uses: per-compilation options, and process flags for the commands.

Two kinds of setting, kept apart on purpose:

- `compiler_options(platform)`: options msjax passes to its own `jax.jit` calls (the train step, the
  evaluation and prediction functions). They change how *those* programs are compiled and
  nothing else in the process. On CPU msjax keeps `jax.lax.optimization_barrier` alive
  (XLA:CPU's pass `cse_barrier_expander` would remove it before fusion): the ResNet blocks put
  a barrier on each block's output (`msjax.models.layers.materialize`), and without it XLA:CPU
  fuses the elementwise residual path of consecutive blocks into every consumer, recomputing
  all earlier blocks' BatchNorm, addition and ReLU in each later one (quadratic in depth).
  If you jit a msjax model yourself, pass `compiler_options=msjax.xla.compiler_options("cpu")`
  to get the same program; docs/performance.md has what it measured.
- `add_xla_flags()`: process-wide XLA_FLAGS, read once by XLA when the first backend starts.
  Only a command's entry point calls it (for `config.deterministic`), before any
  computation; afterwards it raises instead of being silently ignored.

Importing this module changes nothing.
"""

from __future__ import annotations

import os
import sys

DISABLE_PASSES = "--xla_disable_hlo_passes"
KEEP_BARRIERS_PASS = "cse_barrier_expander"


class BackendStartedError(RuntimeError):
    """A flag was requested after JAX started a backend, so XLA would ignore it."""


def compiler_options(platform: str) -> dict[str, str]:
    """The XLA options of msjax's jitted model functions compiled for `platform`.

    Args:
      platform: the platform of the devices the function is compiled for ('cpu', 'gpu',
        'tpu', ...; `msjax.sharding.platform(mesh)`), not necessarily this host's.

    Returns:
      A dict for `jax.jit(..., compiler_options=...)`; empty where nothing is needed.
    """
    if platform == "cpu":
        return {DISABLE_PASSES.removeprefix("--"): KEEP_BARRIERS_PASS}
    return {}


def backend_started() -> bool:
    """Whether JAX has started a backend (after which XLA_FLAGS changes have no effect).

    JAX has no public API for this question (jax 0.10 and 0.11); its internal one is used
    when present, and otherwise any imported jax counts as started (the safe answer).
    """
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True


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
            values += [v for v in value.split(",") if v not in values]
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
