"""The run folder: created writable, and never silently reused by a different experiment.

A workdir records its config in WORKDIR/config.json. Starting again with the same workdir
resumes the run, so a config that changes what is computed (model, data, loss, optimiser,
seed) would silently mix two experiments in one set of checkpoints and metrics. Once the
workdir holds checkpoints, that is refused unless the user says so
(`--allow_config_change`). Fields that only change
bookkeeping (how long to train, how often to log, save and evaluate, where the data lives)
may change freely: extending a run is a normal thing to do.
"""

from __future__ import annotations

import json
import os
import time

import jax

from msjax.errors import WorkdirError

CONFIG_FILE = "config.json"

# Flattened config fields that may differ when a run is resumed.
BOOKKEEPING_FIELDS = (
    "data_dir",
    "distributed",
    "deterministic",
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.num_images",
    "eval.every_steps",
    "eval.batch_size",
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists become tuples, so they compare like the config)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def config_changes(previous: dict, current: dict) -> list[str]:
    """'field: old -> new' for every non-bookkeeping field that differs."""
    old, new = flatten(previous), flatten(current)
    changes = []
    for name in sorted(set(old) | set(new)):
        if name in BOOKKEEPING_FIELDS or old.get(name) == new.get(name):
            continue
        changes.append(f"{name}: {old.get(name, '(absent)')!r} -> {new.get(name, '(absent)')!r}")
    return changes


def has_checkpoints(workdir: str) -> bool:
    """True when the workdir holds a saved train state (a run that made progress)."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def prepare_workdir(workdir: str, config, allow_config_change: bool = False) -> None:
    """Creates `workdir`, checks it is writable, and records the config in it.

    Raises:
      WorkdirError: the folder cannot be created or written, or it holds checkpoints of a
        config that differs in a field that changes the computation (unless
        `allow_config_change`; then the new config is recorded beside the old one, as
        config.<time>.json). A workdir without checkpoints (a run that failed to start)
        takes the new config.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable: {e}") from None
    path = os.path.join(workdir, CONFIG_FILE)
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError as e:
                raise WorkdirError(f"{path} is not valid JSON ({e}); is {workdir} a run?") from None
        current = json.loads(text)
        changes = config_changes(previous, current)
        resuming = has_checkpoints(workdir)
        if changes and resuming and not allow_config_change:
            listed = "\n  ".join(changes[:12])
            more = f"\n  ... and {len(changes) - 12} more" if len(changes) > 12 else ""
            raise WorkdirError(
                f"workdir {workdir} holds a run of another config ({len(changes)} fields "
                f"differ):\n  {listed}{more}\nUse a new --workdir, or pass "
                "--allow_config_change to continue this run with the new config."
            )
        if resuming and previous != current:
            path = os.path.join(workdir, f"config.{int(time.time())}.json")
    if jax.process_index() == 0:
        # Atomic: another process may be reading the file at this moment.
        with open(f"{path}.tmp", "w") as f:
            f.write(text + "\n")
        os.replace(f"{path}.tmp", path)
