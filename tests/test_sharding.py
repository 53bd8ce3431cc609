"""Several devices train like one: the sharded step on 8 CPU devices against 1 device.

Runs in a subprocess (the device count is fixed when JAX starts); what it compares and why is
in tests/sharded_step_check.py.
"""

import subprocess
import sys

import pytest

from tests.helpers import REPO, with_devices


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
