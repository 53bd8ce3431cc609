"""One command at a time per folder (msjax.locks), and every exit path releasing the lock.

Contention is tried in this process first: `flock` locks belong to an open file, so a lock
this test holds refuses a command run here through its `main(argv)` just as another
process's would. The two-process cases (a second `msjax.train` started while one runs; a
run killed with SIGKILL) run the real command and are in the slow tier.
"""

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from msjax import evaluate, locks, predict, prepare, train
from msjax.data import preparation
from msjax.errors import WorkdirError
from msjax.evaluation import visualize
from tests.helpers import (
    CATALOGUE,
    evaluate_args,
    predict_args,
    refused,
    save_random_checkpoint,
    short_run_args,
    smoke,
    start,
    wait_for_step,
)

IN_USE = "evaluate, predict or prepare on a folder in use"
# A pid no process can have (above the kernel's pid_max).
DEAD_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def write_lock(folder: Path, **holder) -> Path:
    """A lock file as another holder left it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / locks.LOCK_FILE
    fields = {"pid": DEAD_PID, "host": socket.gethostname(), "started": time.time(),
              "command": "python -m msjax.train ..."}  # fmt: skip
    path.write_text(json.dumps({**fields, **holder}))
    return path


def test_a_held_folder_is_refused_naming_the_holder_and_released_after(tmp_path):
    with locks.hold(tmp_path / "run", "--workdir") as held:
        holder = json.loads(held.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirError) as e:
            locks.FolderLock(tmp_path / "run", "--workdir").acquire()
        assert f"is in use by process {os.getpid()} on host" in str(e.value)
    assert not (tmp_path / "run").exists()  # the lock made the folder, and removed it
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "a").write_text("x")
    with locks.hold(tmp_path / "kept"):
        pass
    assert os.listdir(tmp_path / "kept") == ["a"]


def test_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt), locks.hold(tmp_path / "run"):
        (tmp_path / "run" / "partial").write_text("x")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path / "run") == ["partial"]


def test_a_stale_lock_of_this_host_is_taken_over_with_a_note(tmp_path, capsys):
    path = write_lock(tmp_path / "run")
    with locks.hold(tmp_path / "run"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert CATALOGUE["stale lock of a dead process"] in err and str(DEAD_PID) in err
    assert not path.exists()


def test_a_lock_of_another_host_is_refused_with_what_to_do(tmp_path):
    path = write_lock(tmp_path / "run", host="node-17", pid=4242)
    with pytest.raises(WorkdirError) as e, locks.hold(tmp_path / "run", "--workdir"):
        pass
    message = str(e.value)
    assert CATALOGUE["lock of another host"] in message
    assert "process 4242 on host node-17" in message and f"delete {path}" in message
    assert path.exists()  # not ours to remove


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    """On a file system without flock, a live pid of this host holds the lock."""

    def no_flock(fd, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    write_lock(tmp_path / "run", pid=os.getppid())  # alive
    with pytest.raises(WorkdirError, match=f"in use by process {os.getppid()}"):
        locks.FolderLock(tmp_path / "run").acquire()
    write_lock(tmp_path / "run")  # dead
    with locks.hold(tmp_path / "run") as lock:
        assert lock.note and str(DEAD_PID) in lock.note


# ---- every command refuses a folder another holds, before any work --------------------


def test_train_refuses_a_workdir_in_use(smoke_data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's")
    with locks.hold(workdir):
        assert train.run(smoke(smoke_data_dir), str(workdir)) == 2
    err = capsys.readouterr().err
    assert CATALOGUE["two trainings on one workdir"] in err and "Traceback" not in err
    assert sorted(os.listdir(workdir)) == ["notes.txt"]  # nothing written


def test_evaluate_predict_and_prepare_refuse_a_folder_in_use(smoke_data_dir, tmp_path, capsys):
    weights = tmp_path / "w"
    save_random_checkpoint(weights, num_classes=19)
    out = tmp_path / "report"
    with locks.hold(out):
        refused(capsys, evaluate.main, evaluate_args(weights, smoke_data_dir, out), IN_USE)
    assert not out.exists()
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (40, 24)).save(images / "a.png")
    with locks.hold(tmp_path / "pred"):
        refused(capsys, predict.main, predict_args(weights, images, tmp_path / "pred"), IN_USE)
    data = tmp_path / "data"
    with locks.hold(data / "synthetic_source" / "128x64"):
        argv = ["synthetic-source", "--data-dir", data, "--size", "128x64", "--no-progress"]
        refused(capsys, prepare.main, argv, IN_USE)
    assert not (data / "synthetic_source" / "128x64").exists()


def test_sigterm_stops_a_command_that_does_not_train_and_releases_its_lock(
    tmp_path, capsys, monkeypatch
):
    """SIGTERM killed predict at once, leaving its staging folder (and now its lock)."""
    weights = tmp_path / "w"
    save_random_checkpoint(weights, num_classes=19)
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (40, 24)).save(images / "a.png")
    colorize = visualize.colorize

    def terminated_while_writing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler does, mid-way
        return colorize(*args, **kwargs)

    monkeypatch.setattr(visualize, "colorize", terminated_while_writing)
    out = tmp_path / "pred"
    assert predict.main([str(a) for a in predict_args(weights, images, out)]) == 143
    err = capsys.readouterr().err
    assert CATALOGUE["SIGTERM to evaluate, predict, prepare or convert"] in err
    assert "Traceback" not in err
    assert not out.exists()  # no staging folder, no lock, no empty folder
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ---- real processes ----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_training_on_a_running_workdir_is_refused_at_once(smoke_data_dir, tmp_path):
    """Both used to run: every metrics line twice, a failed save, a hang."""
    workdir = str(tmp_path / "run")
    long = ["--config.train.steps=1000", "--config.optim.iter_max=1000"]  # still running
    first = start("msjax.train", *short_run_args(smoke_data_dir, workdir), *long)
    wait_for_step(first, workdir, 1)
    began = time.time()
    second = start("msjax.train", *short_run_args(smoke_data_dir, workdir), *long)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err[-3000:]
    assert time.time() - began < 60 and "Traceback" not in err
    assert f"is in use by process {first.pid} on host {socket.gethostname()}" in err
    assert "python -m msjax.train" in err
    assert first.poll() is None  # the first run was not disturbed
    first.send_signal(signal.SIGTERM)  # it saves its step and exits 0
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps))  # each step's losses logged once
    assert not os.path.exists(os.path.join(workdir, locks.LOCK_FILE))
    assert not [f for f in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in f]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(smoke_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    process = start("msjax.train", *short_run_args(smoke_data_dir, workdir))
    wait_for_step(process, workdir, 2, checkpointed=True)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert os.path.exists(os.path.join(workdir, locks.LOCK_FILE))
    again = start("msjax.train", *short_run_args(smoke_data_dir, workdir))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"was left by process {process.pid}" in err and "taking it over" in err
    assert not os.path.exists(os.path.join(workdir, locks.LOCK_FILE))


def test_a_trainer_generating_data_another_prepares_waits_for_it(tmp_path, capsys):
    """Two smoke runs started at once on one fresh data dir: the second waits for the
    first's generation and reads its result, instead of failing."""
    folder = tmp_path / "synthetic_source" / "128x64"
    with locks.hold(folder), pytest.raises(WorkdirError, match="data set folder"):
        preparation.prepare_one(
            "synthetic-source", "128x64", tmp_path, max_examples=2, refuse_if_busy=True
        )
    preparation.prepare_one("synthetic-source", "128x64", tmp_path, max_examples=2)
    first = locks.FolderLock(folder).acquire()  # another process preparing it again
    timer = threading.Timer(1.5, first.release)
    timer.start()
    summary = preparation.prepare_one("synthetic-source", "128x64", tmp_path, max_examples=2)
    timer.join()
    assert summary["already"] and "waiting for it to finish" in capsys.readouterr().err
