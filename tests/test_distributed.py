"""Several devices and processes train like one: 8 CPU devices in one process, and two JAX
processes (jax.distributed on 127.0.0.1, CPU collectives).

Both run in subprocesses (device counts are fixed when JAX starts).
"""

import subprocess
import sys

import pytest

from tests.subprocess_env import with_devices
from tests.test_train import REPO


@pytest.mark.slow
def test_two_processes_equal_one_process_each_read_their_shard_and_stop_together():
    result = subprocess.run(
        [sys.executable, "-m", "tests.two_process_check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    report = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("two", "one", "source", "target", "preemption", "PASS", "FAIL"))
    ]
    print("\n".join(report))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert report[-1] == "PASS"
    assert "process 0 reads train[0:12], process 1 reads train[12:24]" in result.stdout
    assert "preemption: SIGTERM to process 1 only -> both exited 0" in result.stdout


@pytest.mark.slow
def test_sharded_step_on_eight_cpu_devices_equals_one_device():
    env = with_devices(8)
    result = subprocess.run(
        [sys.executable, "-m", "tests.sharded_step_check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count("8 devices vs 1") == 2
    assert result.stdout.count("parameters vs the float64 step") == 2
    assert result.stdout.strip().splitlines()[-1] == "PASS"
