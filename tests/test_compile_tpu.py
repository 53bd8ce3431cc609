"""The trainer's own step compiled for a TPU topology on this CPU (scripts/compile_check.py).

libtpu (the `tpu` extra, part of the test extra) compiles for `v5e:2x2` without the chips.
The smoke config's tiny model and 64x128 images keep the two compilations short.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compile_check  # noqa: E402


@pytest.mark.slow
def test_tiny_step_compiles_for_v5e_within_hbm_and_without_cpu_barriers():
    config = compile_check.load_config("maxsquare,smoke", "bfloat16")
    assert compile_check.stream_hw(config.source) == (64, 128)
    tpu = compile_check.compile_train_step(config, compile_check.topology_mesh("v5e:2x2"), 1)
    assert 0 < tpu.total < compile_check.CHIPS["v5e"]["hbm"]
    assert tpu.flops > 0
    # The fusion barriers are XLA:CPU's alone: the program compiled for TPU has none.
    assert "opt-barrier" not in tpu.hlo
    # The per-instruction byte count follows XLA's own cost analysis of the program, and
    # the HBM part of it is smaller (much of the traffic is in on-chip memory).
    rows = compile_check.instruction_bytes(tpu.hlo)
    counted = sum(r["bytes"] for r in rows)
    assert abs(counted / tpu.bytes_accessed - 1) < 0.1, (counted, tpu.bytes_accessed)
    assert 0 < tpu.hbm_traffic < counted

    cpu = compile_check.compile_train_step(config, compile_check.topology_mesh("cpu"), 1)
    assert "opt-barrier" in cpu.hlo
