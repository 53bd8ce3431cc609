"""The demo command's arguments (the smoke run of all four stages and the table, as a real
process: tests/test_demo_run.py)."""

import os
import subprocess
import sys


def test_overrides_apply_to_the_default_config(tmp_path):
    """`python -m msjax.demo --config.FIELD=V` without --config: the override reaches the
    default config (it was refused as an unknown flag when the default came last)."""
    result = subprocess.run(
        [sys.executable, "-m", "msjax.demo", f"--workdir={tmp_path}/demo",
         "--config.demo.adapt_steps=-1"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.demo.adapt_steps=-1: must be an integer >= 1" in result.stderr
    assert not os.path.exists(tmp_path / "demo")
