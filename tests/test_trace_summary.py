"""scripts/trace_summary.py: the profile summary a GPU run relies on, checked on the CPU.

A GPU run is short and lent; a parser that fails on it wastes it. So the summariser is
checked here on a real `jax.profiler` trace of this JAX version and on HLO text in the
forms XLA prints (tuple shapes, custom calls, fusion kinds, with and without `%`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import trace_summary  # noqa: E402

CONV_SCOPE = "jit(train_step)/jvp(DeepLabV2)/layer3_5/conv2/conv_general_dilated"
BN_SCOPE = "jit(train_step)/transpose(jvp(DeepLabV2))/layer2_0/bn1/add"
METRIC_SCOPE = "jit(train_step)/jvp(jit(easy_gradient_share))/reduce_sum"
HLO = "\n".join(
    [
        "HloModule jit_train_step, entry_computation_layout={...}",
        "",
        "ENTRY %main.1 (p0: bf16[1,8,8,4]) -> (f32[], bf16[1,8,8,4]) {",
        "  %p0 = bf16[1,8,8,4]{3,2,1,0} parameter(0)",
        "  %cudnn-conv.3 = (bf16[1,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %w), "
        f'window={{size=3x3}}, custom_call_target="__cudnn$convForward", '
        f'metadata={{op_name="{CONV_SCOPE}" source_file="x.py"}}',
        "  loop_add_fusion.2 = f32[1,8,8,4]{3,2,1,0} fusion(p0), kind=kLoop, calls=fused_add, "
        f'metadata={{op_name="{BN_SCOPE}"}}',
        "  %fusion.9 = f32[] fusion(%a), kind=kInput, calls=%f9, "
        f'metadata={{op_name="{METRIC_SCOPE}"}}',
        "  ROOT %tuple.4 = (f32[], bf16[1,8,8,4]{3,2,1,0}) tuple(%fusion.9, %p0)",
        "}",
    ]
)


def test_hlo_instructions_reads_kind_and_scope_in_every_form():
    table = trace_summary.hlo_instructions(HLO)
    assert table["cudnn-conv.3"]["kind"] == "__cudnn$convForward"
    assert table["cudnn-conv.3"]["scope"] == CONV_SCOPE
    assert table["loop_add_fusion.2"]["kind"] == "fusion kLoop"
    assert table["fusion.9"]["kind"] == "fusion kInput"
    assert table["tuple.4"] == {"kind": "tuple", "scope": ""}
    assert table["p0"]["kind"] == "parameter"


def test_part_of_step_names_direction_stage_and_kind():
    part = trace_summary.part_of_step
    table = trace_summary.hlo_instructions(HLO)
    assert part(table["cudnn-conv.3"]["scope"]) == "forward layer3 conv"
    assert part(table["loop_add_fusion.2"]["scope"]) == "backward layer2 BN"
    assert part(table["fusion.9"]["scope"]) == "easy-pixel metrics"
    assert part("jit(train_step)/transpose(jvp(DeepLabV2))/layer6/conv2d_list_1/x") == (
        "backward heads (layer5-6) conv"
    )
    assert part("jit(train_step)/jvp(DeepLabV2)/pw,nowc->nopc/dot_general") == (
        "forward upsampling"
    )
    assert part("jit(train_step)/jvp(DeepLabV2)/bn1/reduce_sum") == "forward stem BN"
    assert part("jit(train_step)/jvp(jit(max_square))/exp") == "losses"
    assert part("jit(train_step)/add") == "optimiser update, other"


def test_summary_of_a_real_trace_accounts_for_the_traced_program(tmp_path):
    """A traced jitted gradient on this backend: events found, named, and summed sensibly."""

    def loss(w, x):
        with jax.named_scope("DeepLabV2"), jax.named_scope("layer1_0"):
            with jax.named_scope("conv1"):
                y = jnp.tanh(x @ w)
        return jnp.sum(y**2)

    step = jax.jit(jax.grad(loss))
    w = jnp.full((256, 256), 0.01)
    x = jnp.asarray(np.random.RandomState(0).randn(256, 256), jnp.float32)
    compiled = step.lower(w, x).compile()
    step(w, x).block_until_ready()
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(2):
            step(w, x).block_until_ready()

    hlo = compiled.as_text()
    per_op, busy_us = trace_summary.device_op_times(
        trace_summary.find_trace(tmp_path), module_prefix="jit_loss"
    )
    table = trace_summary.hlo_instructions(hlo)
    assert per_op, "no event of the traced module in the trace"
    # Every instruction the trace names is one of the compiled program's.
    assert set(per_op) <= set(table), set(per_op) - set(table)
    total_us = sum(us for us, _ in per_op.values())
    assert 0 < busy_us <= total_us * (1 + 1e-9)
    summary = trace_summary.summarise_dir(tmp_path, hlo, steps=2, wall_ms=1.0)
    assert "| part of the step |" in summary
    # The matmuls carry the scope given above, so their time lands in that part.
    assert "layer1 conv" in summary
