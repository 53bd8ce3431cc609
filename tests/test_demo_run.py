"""The demo's smoke setting as a user runs it: a real process that generates its data, trains
every stage, prints the table, writes results.json, and exits soon after the table
(tests/test_exit.py has the other commands and the reason; a file of its own so that
pytest's workers share the long exit checks)."""

import json

import pytest

from tests.helpers import EXIT_GRACE_S, exit_delay


@pytest.mark.slow
def test_demo_smoke_prints_the_table_and_exits_soon_after(tmp_path):
    workdir = tmp_path / "demo"
    status, delay, out = exit_delay(
        ["msjax.demo", "--config", "demo.py:smoke", f"--workdir={workdir}"], tail=12
    )
    assert status == 0, out
    assert "Source only" in out and "MinEnt" in out and "vs control" in out, out
    assert "wall time" in out
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["target_miou"]) == {"source", "control", "minent", "maxsquare"}
    assert all(0.0 <= v <= 1.0 for v in results["target_miou"].values())
    print(f"demo: seconds from the table to exit {delay:.1f}")
    assert delay <= EXIT_GRACE_S
