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

from msjax import outputs, ownership
from msjax.errors import WorkdirError

CONFIG_FILE = "config.json"
# Fields that fix the shapes of the train state: a run cannot continue with other values.
ARCHITECTURE_FIELDS = (
    "model.num_classes",
    "model.blocks",
    "model.width",
    "model.stride_on",
    "model.aspp_branches",
)
# What a run writes in its workdir besides config.json.
RUN_OUTPUTS = ("checkpoints", "best", "final", "metrics.jsonl", "results.json", "tensorboard")

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


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the saved train states in the workdir (complete ones: Orbax's own names)."""
    folder = os.path.join(workdir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(name) for name in names if name.isdigit())


def has_checkpoints(workdir: str) -> bool:
    """True when the workdir holds a saved train state (a run that made progress)."""
    return bool(checkpoint_steps(workdir))


def _read_config(path: str, workdir: str) -> dict:
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); is {workdir} a run?") from None
    if not all(isinstance(previous, dict) and isinstance(previous.get(k), dict)
               for k in ("model", "loss", "train")):  # fmt: skip
        raise WorkdirError(
            f"{path} is not the config of a msjax run, so --workdir {workdir} holds something "
            "else; msjax would write over it. Use a new or empty folder."
        )
    return previous


def check_not_another_folder(workdir: str) -> None:
    """Refuses an existing folder that is not a run but holds what a run would write."""
    if not os.path.isdir(workdir) or os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        return
    clashes = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(workdir, name))]
    if clashes:
        raise WorkdirError(
            f"--workdir {workdir} holds {clashes} but no {CONFIG_FILE}: it is not a msjax run, "
            "and the run would write over them. Use a new or empty folder."
        )


def check_not_past_the_end(workdir: str, config) -> None:
    """Refuses a workdir whose checkpoints are beyond config.train.steps (nothing to train)."""
    steps = checkpoint_steps(workdir)
    if steps and steps[-1] > config.train.steps:
        raise WorkdirError(
            f"workdir {workdir} holds a checkpoint of step {steps[-1]}, beyond "
            f"config.train.steps={config.train.steps}: this config has nothing left to train "
            "there. Raise --config.train.steps to continue the run, or use a new --workdir."
        )


def exported_steps(workdir: str) -> dict[str, int | None]:
    """{'best'|'final': the step its weights are of (None if unrecorded)} of the workdir."""
    found = {}
    for name in ("best", "final"):
        path = os.path.join(workdir, name, "metadata.json")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    found[name] = json.load(f).get("step")
            except (OSError, ValueError, AttributeError):
                found[name] = None
    return found


def check_train_states_kept(workdir: str) -> None:
    """Refuses a run whose train states are gone but whose exported weights are not.

    Training again from step 0 there would replace best/ and final/ (the weights of a run
    whose checkpoints were deleted, e.g. to save space) without a word.
    """
    if has_checkpoints(workdir):
        return
    exported = exported_steps(workdir)
    if exported:
        listed = " and ".join(f"{name}/ (step {step})" for name, step in exported.items())
        raise WorkdirError(
            f"workdir {workdir} holds {listed} but no train state in "
            f"{os.path.join(workdir, 'checkpoints')} (deleted?), so the run cannot resume, "
            "and training from step 0 would replace them. Use a new --workdir (with "
            f"--config.init.checkpoint={os.path.join(workdir, 'final')} to start from its "
            "weights), or move best/ and final/ out of the way to train again here."
        )


def prepare_workdir(workdir: str, config, allow_config_change: bool = False) -> None:
    """Creates `workdir`, checks it is writable, and records the config in it.

    Raises:
      WorkdirError: the folder cannot be created or written; it is not a run but holds what
        a run writes; its checkpoints are past config.train.steps; or it holds checkpoints
        of a config that differs in a field that changes the computation (unless
        `allow_config_change`; then the new config is recorded beside the old one, as
        config.<time>.json). A workdir without checkpoints (a run that failed to start)
        takes the new config; one whose best/ or final/ outlived its checkpoints is refused.
        A folder another command wrote (msjax.ownership) is refused.
    """
    ownership.check_owner(workdir, "msjax.train", what="--workdir")
    check_not_another_folder(workdir)
    check_not_past_the_end(workdir, config)
    check_train_states_kept(workdir)
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
        previous = _read_config(path, workdir)
        current = json.loads(text)
        changes = config_changes(previous, current)
        resuming = has_checkpoints(workdir)
        fixed = [c for c in changes if c.split(":")[0] in ARCHITECTURE_FIELDS]
        if fixed and resuming:
            raise WorkdirError(
                f"workdir {workdir} holds train states of another architecture ("
                + "; ".join(fixed)
                + "): they cannot continue with this model, even with --allow_config_change. "
                "Use a new --workdir (config.init.checkpoint can start it from this run's "
                "best/ or final/ when the class count and backbone match)."
            )
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
        outputs.write_text(path, text + "\n")
