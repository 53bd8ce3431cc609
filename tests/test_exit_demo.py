"""The demo's smoke run, as a real process, exits soon after its table (tests/test_exit.py
has the other commands and the reason; a file of its own so that pytest's workers share the
long exit checks)."""

import pytest

from tests.test_exit import EXIT_GRACE_S, exit_delay


@pytest.mark.slow
def test_demo_smoke_exits_soon_after_its_table(tmp_path):
    status, delay, tail = exit_delay(
        ["msjax.demo", "--config", "demo.py:smoke", f"--workdir={tmp_path}/demo"]
    )
    assert status == 0, tail
    assert "wall time" in tail
    print(f"demo: seconds from the table to exit {delay:.1f}")
    assert delay <= EXIT_GRACE_S
