"""The demo command (configs/demo.py) shrunk to a smoke run: all four stages and the table."""

import json
import os
import subprocess
import sys

import pytest

from msjax.data.preparation import prepare_one
from tests.test_train import load_config


@pytest.mark.slow
def test_demo_smoke_prints_the_table(tmp_path, capsys):
    from msjax.demo import run_demo

    c = load_config("demo", "smoke")
    data_dir = str(tmp_path / "data")
    for stream in (c.source, c.target):
        prepare_one(stream.dataset, stream.config, data_dir, max_examples=24)
    c.data_dir = data_dir
    results = run_demo(c, str(tmp_path / "run"))
    assert set(results["target_miou"]) == {"source", "bn_stats_only", "minent", "maxsquare"}
    out = capsys.readouterr().out
    assert "MinEnt" in out and "source only" in out and "vs control" in out
    assert json.load(open(tmp_path / "run" / "results.json")) == results


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
