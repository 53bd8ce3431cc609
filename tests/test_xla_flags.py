"""msjax's default XLA flags: how they merge with the user's, and what they buy on CPU."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from msjax import xla_flags
from msjax.models import tiny_deeplabv2

KEEP_BARRIERS = "--xla_disable_hlo_passes=cse_barrier_expander"


@pytest.mark.parametrize(
    "existing, expected",
    [
        ("", KEEP_BARRIERS),
        (
            "--xla_force_host_platform_device_count=8",
            f"--xla_force_host_platform_device_count=8 {KEEP_BARRIERS}",
        ),
        # XLA keeps only the last occurrence of a flag: the pass lists are merged into one.
        (
            "--xla_disable_hlo_passes=foo --x=1",
            "--xla_disable_hlo_passes=foo,cse_barrier_expander --x=1",
        ),
        (KEEP_BARRIERS, KEEP_BARRIERS),
        (
            "--xla_disable_hlo_passes=cse_barrier_expander,foo",
            "--xla_disable_hlo_passes=cse_barrier_expander,foo",
        ),
    ],
)
def test_merge_flags(existing, expected):
    assert xla_flags.merge_flags(existing, KEEP_BARRIERS) == expected


def test_merge_flags_keeps_the_users_value_of_other_flags():
    existing = "--xla_gpu_deterministic_ops=false"
    assert xla_flags.merge_flags(existing, "--xla_gpu_deterministic_ops=true") == existing


def _xla_flags_after(code: str, **env) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport os; print(os.environ.get('XLA_FLAGS', ''))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def test_import_msjax_adds_the_default_flags_and_keeps_the_users():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    flags = _xla_flags_after("import msjax", **env)
    assert flags == f"--xla_force_host_platform_device_count=2 {KEEP_BARRIERS}"
    assert _xla_flags_after("import msjax", MSJAX_XLA_DEFAULTS="0", **env) == env["XLA_FLAGS"]
    # Too late once a backend runs: nothing changes and nothing fails (msjax is then only
    # slower on CPU).
    late = "import jax; jax.devices(); import msjax"
    assert _xla_flags_after(late, **env) == env["XLA_FLAGS"]


def _largest_loop_fusion(layer3_blocks: int) -> int:
    """Operands of the largest elementwise (loop) fusion in a tiny network's compiled gradient."""
    model = tiny_deeplabv2(blocks=(1, 1, layer3_blocks, 1), num_classes=5)
    x = jnp.zeros((1, 33, 33, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    def loss(params, batch_stats, x):
        (main, _), _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(main)

    lowered = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"], x)
    sizes = [
        line.split(" fusion(")[1].split("), kind=")[0].count("%")
        for line in lowered.compile().as_text().splitlines()
        if " fusion(" in line and "kind=kLoop" in line
    ]
    return max(sizes)


def test_residual_blocks_are_not_recomputed_by_later_blocks():
    """With the barriers kept, no fusion grows with depth (without them: 47 operands at 8
    blocks, a fusion that recomputes the residual path of all earlier blocks)."""
    assert jax.default_backend() == "cpu"
    assert KEEP_BARRIERS in os.environ.get("XLA_FLAGS", ""), "import msjax came too late"
    shallow, deep = _largest_loop_fusion(2), _largest_loop_fusion(8)
    assert deep == shallow, (shallow, deep)
    assert deep < 20
