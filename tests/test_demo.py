"""The demo command's arguments (the smoke run of all four stages and the table, as a real
process: tests/test_demo_run.py)."""

import os

from msjax import demo
from tests.helpers import run_main


def test_overrides_apply_to_the_default_config(tmp_path, capsys):
    """`python -m msjax.demo --config.FIELD=V` without --config: the override reaches the
    default config (the default goes first: an override before --config is refused as an
    unknown flag)."""
    status, err = run_main(
        demo.main, capsys, f"--workdir={tmp_path}/demo", "--config.demo.adapt_steps=-1"
    )
    assert status == 2 and "Traceback" not in err
    assert "config.demo.adapt_steps=-1: must be an integer >= 1" in err
    assert not os.path.exists(tmp_path / "demo")
