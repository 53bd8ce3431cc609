r"""`python -m msjax.train`: train or adapt DeepLabV2 with the maximum squares loss.

    python -m msjax.train --config configs/gta2city.py:iw --workdir runs/iw \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS [--config.batch_pairs=8]

`--config NAME.py` without a folder is looked up in configs/; `--config.FIELD=VALUE` changes
a field of the (locked) config, and a misspelt field is an error. The work itself is
`msjax.trainer.train_and_evaluate` (or `msjax.demo.run_demo` for configs/demo.py).

A problem the user can fix (a bad path, field or file; see docs/errors.md) prints one
`error: ...` line and exits 2; `--verbose` shows the traceback too. SIGTERM saves a
checkpoint and exits 0; the same command continues the run.
"""

from __future__ import annotations

import os
import sys

# TensorFlow (the input pipeline) prints a banner at import unless told not to.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
from absl import flags, logging
from ml_collections import config_flags

from msjax import xla_flags
from msjax.trainer import TrainingError, train_and_evaluate

DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def resolve_config_path(argv: list[str]) -> list[str]:
    """Lets `--config gta2city.py[:arg]` name a file in configs/ when no such path exists."""
    out = []
    for i, arg in enumerate(argv):
        value, prefix = None, None
        if arg.startswith("--config="):
            prefix, value = "--config=", arg[len("--config=") :]
        elif i > 0 and argv[i - 1] == "--config":
            prefix, value = "", arg
        if value is not None:
            path, sep, rest = value.partition(":")
            if not os.path.exists(path) and os.path.exists(os.path.join(CONFIGS_DIR, path)):
                value = os.path.join(CONFIGS_DIR, path) + sep + rest
            arg = prefix + value
        out.append(arg)
    return out


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/NAME.py[:ARG]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Folder of the run (created; resumed if it exists).")
flags.DEFINE_bool("verbose", False, "Show tracebacks of user-facing errors.")
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Continue the run in --workdir although it was started with a config that differs in "
    "a field that changes the computation (refused otherwise).",
)


def use_deterministic_gpu_ops() -> None:
    """Asks XLA for deterministic GPU kernels (no atomics, fixed reduction orders).

    XLA reads XLA_FLAGS once, when the first backend starts, so this must run before any
    computation; afterwards it raises rather than silently doing nothing. It changes nothing
    on CPU (already deterministic) or TPU.
    """
    try:
        xla_flags.add_xla_flags(DETERMINISTIC_GPU_FLAG)
    except xla_flags.BackendStartedError:
        raise TrainingError(
            "config.deterministic=True, but JAX has already started its backend, so XLA "
            f"would ignore the flag: set XLA_FLAGS={DETERMINISTIC_GPU_FLAG} before "
            "starting Python instead."
        ) from None
    print(f"Deterministic GPU kernels requested (XLA_FLAGS={os.environ['XLA_FLAGS']}).")


def run(config, workdir: str | None, *, verbose=False, allow_config_change=False) -> int:
    """Runs one experiment as the command line does; returns the exit status.

    User-facing errors (TrainingError, and ValueError with its subclasses CheckpointError,
    WorkdirError, DataError, WeightsError) print one `error: ...` line to stderr and give 2,
    or propagate with `verbose`. Anything else is a bug and keeps its traceback.
    """
    from msjax.data import hide_gpus_from_tensorflow

    try:
        if workdir is None:
            raise ValueError("--workdir is required: the folder of the run.")
        if config.deterministic:
            use_deterministic_gpu_ops()
        hide_gpus_from_tensorflow()
        if config.distributed:
            jax.distributed.initialize()
        if config.experiment == "demo":
            from msjax.demo import run_demo

            run_demo(config, workdir)
        else:
            train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
    except (TrainingError, ValueError) as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(_argv) -> int:
    # Orbax logs every save step at INFO; the progress bar and metrics.jsonl say enough.
    logging.set_verbosity(logging.INFO if flags.FLAGS.verbose else logging.WARNING)
    return run(
        _CONFIG.value,
        flags.FLAGS.workdir,
        verbose=flags.FLAGS.verbose,
        allow_config_change=flags.FLAGS.allow_config_change,
    )


def _without_traceback(message: str, verbose: bool) -> str:
    """ml_collections puts a config file's traceback into its flag error: keep its last line."""
    head, sep, trace = message.partition("Traceback (most recent call last):")
    if not sep or verbose:
        return message
    last = [line for line in trace.strip().splitlines() if line.strip()][-1]
    return f"{head.strip()} {last.partition(': ')[2] or last}"


def main(argv=None) -> int:
    """Parses flags and runs; user-facing errors print one message and return 2."""
    argv = resolve_config_path(list(sys.argv if argv is None else argv))
    verbose = "--verbose" in argv
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {_without_traceback(str(e), verbose)}", file=sys.stderr)
        print("Pass --helpfull to list the flags.", file=sys.stderr)
        return 2
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for a misspelt or mistyped --config.FIELD override.
        if verbose:
            raise
        inner = e.args[0] if e.args else e
        inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
        print(f"error: bad --config override or config file: {inner}", file=sys.stderr)
        return 2
    return _run(remaining)


if __name__ == "__main__":
    sys.exit(main())
