"""Ctrl-C (SIGINT) during training: handled like SIGTERM, never a traceback, never lost.

The cases where the process and its exit status are the point run the real command in a
subprocess (`python -m msjax.train`); the start-up cases send the signal to this process
at a known point, so no test depends on timing.
"""

import json
import os
import signal

import pytest

from msjax import cli, train
from msjax.training import loop, preemption
from msjax.training import run as run_module
from msjax.training.checkpoints import RunCheckpoints
from msjax.training.stages import finished_summary
from tests.helpers import (
    SHORT_RUN_STEPS,
    committed_steps,
    run_main,
    saved_train_state,
    short_run_args,
    short_run_config,
    smoke,
    start,
    wait_for_step,
)


@pytest.mark.slow
def test_ctrl_c_saves_the_step_exits_130_and_the_run_resumes(smoke_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    process = start("msjax.train", *short_run_args(smoke_data_dir, workdir))
    wait_for_step(process, workdir, 3)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert "Ctrl-C: stopping after this step and saving it" in stderr
    saved = int(stdout.split("Stopped by SIGINT (Ctrl-C): saved step ")[1].split()[0])
    assert 3 <= saved < SHORT_RUN_STEPS
    ckpts = RunCheckpoints(workdir)
    assert ckpts.latest_step() == saved
    ckpts.close()
    assert not os.path.exists(os.path.join(workdir, "final"))
    summary = loop.train_and_evaluate(short_run_config(smoke_data_dir), workdir)
    assert summary["start_step"] == saved and summary["final_step"] == SHORT_RUN_STEPS


def test_second_ctrl_c_exits_at_once(monkeypatch, capsys):
    """The handler itself: the first Ctrl-C is recorded, the second exits with 130 at once."""
    exits = []
    monkeypatch.setattr(preemption.os, "_exit", exits.append)
    with preemption.StopSignals() as signals:
        signals.phase = preemption.TRAINING
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received() == signal.SIGINT and exits == []
        os.kill(os.getpid(), signal.SIGINT)
    assert exits == [130]
    err = capsys.readouterr().err
    assert "Ctrl-C: stopping after this step and saving it (Ctrl-C again to exit now)." in err
    assert "Second Ctrl-C: exiting now." in err


@pytest.mark.slow
def test_ctrl_c_twice_keeps_the_checkpoints(smoke_data_dir, tmp_path):
    """The real command: whether the second Ctrl-C lands during the step, the save or the
    exit, the status is 130, no traceback, and the checkpoints committed before restore."""
    workdir = str(tmp_path / "run")
    process = start("msjax.train", *short_run_args(smoke_data_dir, workdir))
    wait_for_step(process, workdir, 3, checkpointed=True)
    committed = committed_steps(workdir)
    process.send_signal(signal.SIGINT)
    # Python runs a handler once for signals that arrive together: wait for the first one.
    while "Ctrl-C: stopping after this step" not in process.stderr.readline():
        assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    # Saves are atomic: a checkpoint committed before is still there and restores (the
    # test above resumes a stopped run to its end).
    assert set(committed) <= set(committed_steps(workdir))
    state = saved_train_state(workdir, max(committed))
    assert int(state["step"]) == max(committed)


def test_ctrl_c_while_the_command_starts_is_never_lost(tmp_path, capsys, monkeypatch):
    """Unhandled, a Ctrl-C during start-up ends in a traceback, or is swallowed (by JAX's
    garbage-collection hook) so that the run trains to the end and exits 0."""
    real_parse = cli.parse_config_flags

    def parse_then_ctrl_c(argv, *args, **kwargs):
        parsed = real_parse(argv, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the flags are parsed
        return parsed

    monkeypatch.setattr(cli, "parse_config_flags", parse_then_ctrl_c)
    status = train.main(["train", "--config", "gta2city.py:smoke", f"--workdir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert status == 130 and "Traceback" not in err
    assert "Stopped by SIGINT (Ctrl-C) before the run started; nothing was written." in err
    assert not os.path.exists(tmp_path / "run")


def test_ctrl_c_while_the_run_is_built_stops_before_the_first_step(
    smoke_data_dir, tmp_path, capsys, monkeypatch
):
    real_build = run_module.build_run

    def build_then_ctrl_c(*args, **kwargs):
        built = real_build(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during compilation
        return built

    monkeypatch.setattr(loop, "build_run", build_then_ctrl_c)
    assert train.run(smoke(smoke_data_dir), str(tmp_path)) == 130
    captured = capsys.readouterr()
    assert "Ctrl-C: stopping before training starts" in captured.err
    assert "Stopped by SIGINT (Ctrl-C) before the first step: nothing new to save" in captured.out
    assert "Traceback" not in captured.err
    assert committed_steps(tmp_path) == [] and not os.path.exists(tmp_path / "final")


def test_missing_or_folder_config_file_cli(tmp_path, capsys):
    """A missing --config file is one line (ml_collections would raise its traceback)."""
    status, err = run_main(train.main, capsys, "--config", "nope.py", f"--workdir={tmp_path}/run")
    assert status == 2 and "Traceback" not in err
    assert "error: --config nope.py: nope.py does not exist" in err
    assert "gta2city.py" in err
    assert cli.config_file_problem(["x", "--config=configs"]).startswith(
        "--config configs: configs is a folder"
    )


def test_a_damaged_stage_summary_runs_the_stage_again(tmp_path):
    """The demo skips finished stages by their results.json; a damaged one is no traceback."""
    (tmp_path / "results.json").write_text('{"final_step": 4')
    assert finished_summary(str(tmp_path), 4) is None
    (tmp_path / "results.json").write_text(json.dumps({"final_step": 4}))
    assert finished_summary(str(tmp_path), 4) == {"final_step": 4}
