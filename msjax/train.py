r"""`python -m msjax.train`: train or adapt DeepLabV2 with the maximum squares loss.

    python -m msjax.train --config configs/gta2city.py:iw --workdir runs/iw \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS [--config.batch_pairs=8]

`--config NAME.py` without a folder is looked up in configs/; `--config.FIELD=VALUE` changes
a field of the (locked) config, and a misspelt field is an error. The work itself is
`msjax.trainer.train_and_evaluate` (or `msjax.demo.run_demo` for configs/demo.py).
"""

from __future__ import annotations

import os
import sys

# TensorFlow (the input pipeline) prints a banner at import unless told not to.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
from absl import flags, logging
from ml_collections import config_flags

from msjax.trainer import TrainingError, train_and_evaluate

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


def _run(_argv) -> int:
    from msjax.data import hide_gpus_from_tensorflow

    hide_gpus_from_tensorflow()
    # Orbax logs every save step at INFO; the progress bar and metrics.jsonl say enough.
    logging.set_verbosity(logging.INFO if flags.FLAGS.verbose else logging.WARNING)
    if flags.FLAGS.workdir is None:
        raise TrainingError("--workdir is required: the folder of the run.")
    config = _CONFIG.value
    if config.distributed:
        jax.distributed.initialize()
    if config.experiment == "demo":
        from msjax.demo import run_demo

        run_demo(config, flags.FLAGS.workdir)
    else:
        train_and_evaluate(config, flags.FLAGS.workdir)
    return 0


def main(argv=None) -> int:
    """Parses flags and runs; user-facing errors print one message and return 2."""
    argv = resolve_config_path(list(sys.argv if argv is None else argv))
    verbose = "--verbose" in argv
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to list the flags.", file=sys.stderr)
        return 2
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for a misspelt or mistyped --config.FIELD override.
        if verbose:
            raise
        inner = e.args[0] if e.args else e
        inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
        print(f"error: bad --config override or config file: {inner}", file=sys.stderr)
        return 2
    try:
        return _run(remaining)
    except (TrainingError, ValueError) as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
