"""Several processes train like one: two JAX processes (jax.distributed on 127.0.0.1, CPU
collectives), run in subprocesses. Several devices in one process: tests/test_sharding.py
(a file of its own, so that the two long checks can run on different pytest workers).
"""

import subprocess
import sys

import pytest

from tests.helpers import REPO


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
