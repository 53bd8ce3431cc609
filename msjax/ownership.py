"""What wrote a folder: a command writes only into a new folder, or one it wrote itself.

Every command that writes a folder of several outputs marks it with `.msjax-owner.json`
(the command, and for reports the experiment they are of): the chain folders of
`msjax.demo`, `msjax.study` and `msjax.reproduce`, and the `--out` of `msjax.evaluate` and
`msjax.predict`. A training run's workdir is marked by its config.json. Before writing, a
command refuses a folder that
- another command wrote (the demo into a training run's workdir would replace its
  results.json; a training run into an evaluation report folder);
- holds a report of another experiment (`msjax.evaluate` of another checkpoint, data set,
  protocol or views; `msjax.predict` of another checkpoint or input size): writing there
  would replace it;
- holds, without a mark, files the command would replace (files msjax did not write);
- lies inside what another output manages: a run's checkpoints/, best/, final/ or
  tensorboard/, or a weights folder (their next write replaces or prunes it).

Folders written before the mark existed are recognised by what they hold (config.json of a
run, the results.json of a demo or of an evaluation, a reproduction's reports/).

`use_folder(folder, command, ...)` is the one call at the top of a command's work: it holds
the folder's lock (`msjax.locks`), checks the owner and marks the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from msjax import locks
from msjax.errors import WorkdirError

MARKER = ".msjax-owner.json"
# What each command's folder is, in messages.
KINDS = {
    "msjax.train": "the workdir of a training run",
    "msjax.demo": "the workdir of the demo",
    "msjax.study": "the workdir of a study",
    "msjax.reproduce": "the workdir of a reproduction",
    "msjax.evaluate": "an evaluation report folder",
    "msjax.predict": "a folder of predictions",
}


def _read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _evaluation_identity(results: dict) -> dict:
    """The identity of an evaluation report, from its results.json."""
    views = results.get("views") or {}
    return {
        "checkpoint": results.get("checkpoint"),
        "dataset": results.get("dataset"),
        "split": results.get("split"),
        "protocol": results.get("protocol"),
        "input_size": results.get("input_size"),
        "flip": views.get("flip"),
        "scales": views.get("scales"),
    }


def recognize(folder) -> tuple[str | None, dict | None]:
    """(command, identity) of what wrote `folder`, or (None, None) if nothing recognisable.

    The mark decides; without one, a folder msjax wrote before marks existed is recognised
    by its files.
    """
    folder = Path(folder)
    marker = _read_json(folder / MARKER)
    if isinstance(marker, dict) and marker.get("command") in KINDS:
        return marker["command"], marker.get("identity")
    config = _read_json(folder / "config.json")
    if isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in ("model", "loss")):
        return "msjax.train", None
    results = _read_json(folder / "results.json")
    if isinstance(results, dict) and "target_miou" in results:
        return "msjax.demo", None
    if isinstance(results, dict) and "confusion_matrix" in results:
        return "msjax.evaluate", _evaluation_identity(results)
    if (folder / "reports").is_dir():
        return "msjax.reproduce", None
    return None, None


# Sub-folders of a training run that the run itself manages (replaces, prunes).
RUN_MANAGED = ("checkpoints", "best", "final", "tensorboard")


def check_not_inside_managed(folder: Path, what: str) -> None:
    """Raises WorkdirError if `folder` lies in a part of another output msjax manages: a
    training run's checkpoints/, best/, final/ or tensorboard/, or a weights folder (their
    next write replaces or prunes what is there)."""
    child, parent = folder, folder.parent
    while parent != child:
        if (parent / "metadata.json").is_file() and (parent / "variables").is_dir():
            raise WorkdirError(
                f"{what} {folder} is inside the weights folder {parent}, which msjax replaces "
                "as a whole. Use a folder outside it."
            )
        if child.name in RUN_MANAGED and recognize(parent)[0] == "msjax.train":
            raise WorkdirError(
                f"{what} {folder} is inside {child}, which the training run {parent} manages "
                "(it replaces or prunes what is there). Use a folder outside it."
            )
        child, parent = parent, parent.parent


def _changes(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def check_owner(folder, command: str, *, what: str, identity=None, clashes=()) -> None:
    """Raises WorkdirError unless `command` may write into `folder` (see the module doc),
    or one of its parents manages `folder` (`check_not_inside_managed`).

    Args:
      folder: the folder.
      command: the writing command ('msjax.evaluate', ...).
      what: how the user named it ('--out', '--workdir').
      identity: the experiment the output is of (None: any of this command's is fine).
      clashes: names (relative to folder) the command would replace; refused when the
        folder is not this command's.
    """
    folder = Path(folder).absolute()
    check_not_inside_managed(folder, what)
    if not folder.is_dir():
        return
    owner, theirs = recognize(folder)
    if owner is not None and owner != command:
        raise WorkdirError(
            f"{what} {folder} is {KINDS[owner]} (python -m {owner}); python -m {command} "
            "does not write into another command's folder. Use a new folder."
        )
    if owner == command and identity is not None and theirs is not None:
        changes = _changes(theirs, identity)
        if changes:
            raise WorkdirError(
                f"{what} {folder} holds the output of another {command.split('.')[1]} "
                f"({changes}); writing this one there would replace it. Use another {what} "
                f"(or delete {folder} first)."
            )
    if owner is None:
        found = sorted(str(c) for c in clashes if (folder / c).exists())
        if found:
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            listed = ", ".join(found[:5]) + more
            raise WorkdirError(
                f"{what} {folder} holds {listed}, which msjax did not write there (no "
                f"{MARKER}); python -m {command} would replace them. Use a new or empty folder."
            )


def mark(folder, command: str, identity=None) -> None:
    """Records in `folder` that `command` writes it (for the experiment `identity`)."""
    from msjax import outputs

    text = json.dumps({"command": command, "identity": identity}, indent=1, sort_keys=True)
    outputs.write_text(Path(folder) / MARKER, text + "\n")


@contextlib.contextmanager
def use_folder(folder, command: str, *, what: str, identity=None, clashes=(), collective=False):
    """Holds `folder`'s lock, checks that `command` may write it and marks it, for the block.

    If the block fails before anything but the mark was written, the mark is removed again
    (and the folder, if this call created it), so a failed command leaves no trace.

    Args:
      folder, command, what, identity, clashes: as in `check_owner`.
      collective: the block runs on every process of a multi-process job (`locks.hold`);
        process 0 writes the mark.
    """
    folder = Path(os.path.expanduser(os.fspath(folder))).absolute()
    with locks.hold(folder, what, collective=collective):
        check_owner(folder, command, what=what, identity=identity, clashes=clashes)
        writer = locks.process_index(collective) == 0
        if writer:
            mark(folder, command, identity)
        try:
            yield folder
        except BaseException:
            left = set(os.listdir(folder)) - {locks.LOCK_FILE}
            if writer and left <= {MARKER}:
                with contextlib.suppress(OSError):
                    os.remove(folder / MARKER)
            raise
