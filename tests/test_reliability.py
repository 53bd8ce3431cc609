"""Crashes, preemption and divergence: a run always continues bit for bit, or stops clearly.

Each interrupted run is the real command line in a subprocess (`python -m msjax.train`),
killed or signalled while it trains; the restart runs in this process with the same
config and workdir. The uninterrupted run it is compared with is computed once per module.
"""

import json
import os
import random
import re
import signal
import time

import jax
import numpy as np
import pytest

from msjax import train
from msjax.training.checkpoints import RunCheckpoints
from msjax.training.loop import train_and_evaluate
from tests.helpers import (
    SHORT_RUN_STEPS,
    logged_steps,
    saved_train_state,
    short_run_args,
    short_run_config,
    start,
    wait_for_step,
)

STEPS = SHORT_RUN_STEPS


@pytest.fixture(scope="module")
def data_dir(smoke_data_dir):
    return smoke_data_dir


def train_state(workdir, step=STEPS):
    return saved_train_state(workdir, step)


def losses(workdir):
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [(r["step"], r["loss"], r["loss_target"], r["grad_norm"]) for r in lines if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    summary = train_and_evaluate(short_run_config(data_dir), workdir)
    assert summary["final_step"] == STEPS
    return workdir


def assert_same_run(workdir, reference):
    """Bit-identical final train state (every leaf) and logged losses."""
    a, b = train_state(workdir), train_state(reference)
    assert set(a) == {"params", "batch_stats", "opt_state", "step"}
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert losses(workdir) == losses(reference)
    assert [s for s, *_ in losses(workdir)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_restart_is_bit_identical(data_dir, uninterrupted, tmp_path):
    kill_after = random.Random().randint(3, 7)
    workdir = str(tmp_path / "run")
    process = start("msjax.train", *short_run_args(data_dir, workdir))
    wait_for_step(process, workdir, kill_after, checkpointed=True)
    process.send_signal(signal.SIGKILL)
    print(f"killed after step {logged_steps(workdir)} (drawn: {kill_after})")
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    ckpts = RunCheckpoints(workdir)
    resumed_from = ckpts.latest_step()
    ckpts.close()
    assert resumed_from is not None and resumed_from < STEPS, "killed too late to test a resume"
    summary = train_and_evaluate(short_run_config(data_dir), workdir)
    assert summary["start_step"] == resumed_from and summary["final_step"] == STEPS
    assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_keeps_the_previous_one(data_dir, uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    process = start("tests.kill_during_save", "6", *short_run_args(data_dir, workdir))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    folders = os.listdir(os.path.join(workdir, "checkpoints"))
    # Step 6 was fully written, but only to its temporary folder: it must not count.
    assert "6" not in folders and any(f.startswith("6.orbax-checkpoint-tmp") for f in folders)
    summary = train_and_evaluate(short_run_config(data_dir), workdir)
    assert summary["start_step"] == 4
    assert not any("tmp" in f for f in os.listdir(os.path.join(workdir, "checkpoints")))
    assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero(data_dir, uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    # Also the GPU determinism flag: applied before JAX starts, and no change on CPU.
    process = start(
        "msjax.train", *short_run_args(data_dir, workdir), "--config.deterministic=True"
    )
    wait_for_step(process, workdir, 3)
    signalled = time.time()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    took = time.time() - signalled
    assert process.returncode == 0, stderr[-3000:]
    assert "Deterministic GPU kernels requested (XLA_FLAGS=" in stdout
    assert "--xla_gpu_deterministic_ops=true" in stdout
    saved = int(stdout.split("Stopped by SIGTERM: saved step ")[1].split()[0])
    print(f"SIGTERM -> exit 0 in {took:.1f} s, saved step {saved}")
    assert took < 30
    assert 3 <= saved < STEPS
    ckpts = RunCheckpoints(workdir)
    assert ckpts.latest_step() == saved
    ckpts.close()
    assert not os.path.exists(os.path.join(workdir, "final"))
    summary = train_and_evaluate(short_run_config(data_dir), workdir)
    assert summary["start_step"] == saved
    assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_non_finite_run_exits_non_zero_naming_the_step_and_the_checkpoint_restores(
    data_dir, tmp_path, capsys
):
    c = short_run_config(data_dir, **{"optim.lr": 1e9, "train.checkpoint_every": 1})
    status = train.run(c, str(tmp_path))
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    match = re.search(r"^error: Non-finite (\w+) at step (\d+); stopping", err, re.MULTILINE)
    assert match, err
    assert match[1] in ("loss", "loss_source", "loss_target", "grad_norm")
    bad_step = int(match[2])
    ckpts = RunCheckpoints(str(tmp_path))
    good = ckpts.latest_step()
    ckpts.close()
    assert good is not None and good < bad_step
    state = train_state(str(tmp_path), good)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if x.dtype.kind == "f")
