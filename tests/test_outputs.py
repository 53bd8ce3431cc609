"""msjax.outputs: the one way msjax replaces an output, so nothing is lost before its
replacement is complete (docs/errors.md, "Data loss")."""

import errno
import json
import os

import numpy as np
import pytest

from msjax import outputs, weights
from msjax.errors import ConfigError, OutputError, WeightsError
from msjax.weights import folder
from tests.helpers import random_variables, save_random_checkpoint


def tree(path):
    """{relative path: bytes} of every file under `path`."""
    return {
        os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(path)
        for f in files
    }


def unused_pid() -> int:
    """A process id that no process holds now, as a process that died leaves its own."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 1, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:  # held by another user's process
            continue
    raise AssertionError("every process id is in use")


def test_staged_folder_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), outputs.staged_folder(final) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("failed half-way")
    assert tree(final) == {"old.txt": b"old"} and os.listdir(tmp_path) == ["out"]
    with pytest.raises(KeyboardInterrupt), outputs.staged_folder(final) as tmp:
        raise KeyboardInterrupt  # Ctrl-C
    assert tree(final) == {"old.txt": b"old"} and os.listdir(tmp_path) == ["out"]
    with outputs.staged_folder(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert tree(final) == {"new.txt": b"new"} and os.listdir(tmp_path) == ["out"]


def test_swap_without_renameat2_and_a_kill_between_the_renames(tmp_path, monkeypatch):
    """Where the atomic exchange is missing, a run killed between the two renames of the
    fallback swap leaves the old folder under a temporary name: the next write restores it."""
    monkeypatch.setattr(outputs, "_renameat2_exchange", lambda a, b: False)
    final = tmp_path / "w"
    final.mkdir()
    (final / "a").write_text("1")
    with outputs.staged_folder(final) as tmp:
        (tmp / "b").write_text("2")
    assert tree(final) == {"b": b"2"}
    # A process (now dead) renamed the old folder away and died before renaming the new one.
    dead = unused_pid()
    host = outputs._tag().rpartition("-")[0]
    os.rename(final, tmp_path / f"w.msjax-old-{host}-{dead}")
    (tmp_path / f"w.msjax-tmp-{host}-{dead}").mkdir()  # its half-written new folder
    outputs.clean_stale(final)
    assert tree(final) == {"b": b"2"} and os.listdir(tmp_path) == ["w"]


def test_write_text_replaces_whole_files(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    outputs.write_text(path, json.dumps({"a": 1}))
    real_replace = os.replace

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        outputs.write_text(path, json.dumps({"a": 2}))
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["results.json"]


def test_staging_moves_entries_only_after_success_and_keeps_other_files(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    (out / "results.json").write_text("old")
    (out / "predictions").mkdir()
    (out / "predictions" / "a.png").write_text("old a")
    with pytest.raises(RuntimeError), outputs.Staging(out) as staging:
        (staging.path / "results.json").write_text("new")
        raise RuntimeError
    assert tree(out) == {"notes.txt": b"the user's", "results.json": b"old",
                         "predictions/a.png": b"old a"}  # fmt: skip
    with outputs.Staging(out) as staging:
        (staging.path / "results.json").write_text("new")
        (staging.path / "predictions").mkdir()
        (staging.path / "predictions" / "b.png").write_text("new b")
    # A staged folder replaces the folder of its name as a whole; other files stay.
    assert tree(out) == {"notes.txt": b"the user's", "results.json": b"new",
                         "predictions/b.png": b"new b"}  # fmt: skip
    with outputs.Staging(out, merge=True) as staging:
        (staging.path / "predictions").mkdir()
        (staging.path / "predictions" / "c.png").write_text("c")
    assert tree(out)["predictions/b.png"] == b"new b" and tree(out)["predictions/c.png"] == b"c"
    # A failed command leaves no folder it created.
    with pytest.raises(RuntimeError), outputs.Staging(tmp_path / "new") as staging:
        raise RuntimeError
    assert not (tmp_path / "new").exists()


def a_file(tmp_path):
    (tmp_path / "f").write_text("")
    return tmp_path / "f"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: "", "--out is empty"),
        (a_file, "is a file, not a folder"),
        (lambda p: a_file(p) / "sub", "cannot be created: "),
    ],
    ids=["empty", "a file", "under a file"],
)
def test_output_folder_arguments(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        outputs.check_output_folder(make(tmp_path), "--out")


def test_replacing_a_weights_folder_that_fails_mid_write_keeps_the_old_one(tmp_path, monkeypatch):
    """convert --force and the trainer's best/ and final/ exports all go through weights.save."""
    _, old = save_random_checkpoint(tmp_path / "w", num_classes=19, seed=0)
    before = tree(tmp_path / "w")
    real_dump = json.dump

    def disk_full(*args, **kwargs):  # metadata.json is written after the arrays
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metadata.json")

    monkeypatch.setattr(folder.json, "dump", disk_full)
    _, new = random_variables(19, seed=1)
    with pytest.raises(OutputError, match="No space left on device.*is intact"):
        weights.save(str(tmp_path / "w"), new, {"num_classes": 19}, overwrite=True)
    monkeypatch.setattr(folder.json, "dump", real_dump)
    assert tree(tmp_path / "w") == before and os.listdir(tmp_path) == ["w"]
    _, loaded = weights.load(tmp_path / "w")
    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"],
                                  old["params"]["conv1"]["kernel"])  # fmt: skip


def test_weights_save_never_replaces_a_folder_of_other_files(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "thesis.tex").write_text("years of work")
    model_and_vars = save_random_checkpoint(tmp_path / "w")
    with pytest.raises(WeightsError, match="not a msjax weights folder"):
        weights.save(str(tmp_path / "final"), model_and_vars[1], {}, overwrite=True)
    assert tree(tmp_path / "final") == {"thesis.tex": b"years of work"}
