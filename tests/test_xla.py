"""msjax's XLA settings: nothing changes at import, compiler options keep the barriers, and
the flags a command sets merge with the user's."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from msjax import xla
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
    assert xla.merge_flags(existing, KEEP_BARRIERS) == expected


def test_merge_flags_keeps_the_users_value_of_other_flags():
    existing = "--xla_gpu_deterministic_ops=false"
    assert xla.merge_flags(existing, "--xla_gpu_deterministic_ops=true") == existing


def _xla_flags_after(code: str, **env) -> str:
    """XLA_FLAGS after running `code` with `env` (no XLA_FLAGS unless `env` sets it)."""
    inherited = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env = {**inherited, "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport os; print(os.environ.get('XLA_FLAGS', ''))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


@pytest.mark.slow
def test_import_msjax_changes_no_environment_variable():
    """Not XLA_FLAGS, even through the modules that import TensorFlow; and nothing at all
    through `import msjax`, its models and its command modules (TensorFlow itself sets a few
    variables of its own when the data pipeline imports it)."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    heavy = "import msjax.training.loop, msjax.evaluation.protocol"
    assert _xla_flags_after(heavy, **env) == env["XLA_FLAGS"]
    assert _xla_flags_after(heavy) == ""
    code = "import msjax, msjax.models, msjax.train, msjax.demo, msjax.evaluate, msjax.predict"
    out = subprocess.run(
        [sys.executable, "-c", f"import os; before = dict(os.environ); {code}; "
         "print(sorted(k for k in set(os.environ) | set(before) "
         "if os.environ.get(k) != before.get(k)))"],
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _largest_loop_fusion(layer3_blocks: int, options) -> int:
    """Operands of the largest elementwise (loop) fusion in a tiny network's compiled gradient."""
    model = tiny_deeplabv2(blocks=(1, 1, layer3_blocks, 1), num_classes=5)
    x = jnp.zeros((1, 33, 33, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    def loss(params, batch_stats, x):
        (main, _), _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(main)

    grad = jax.jit(jax.grad(loss), compiler_options=options)
    lowered = grad.lower(variables["params"], variables["batch_stats"], x)
    sizes = [
        line.split(" fusion(")[1].split("), kind=")[0].count("%")
        for line in lowered.compile().as_text().splitlines()
        if " fusion(" in line and "kind=kLoop" in line
    ]
    return max(sizes)


@pytest.mark.slow
def test_residual_blocks_are_not_recomputed_by_later_blocks():
    """With msjax's compiler options no fusion grows with depth; without them a fusion
    recomputes the residual path of all earlier blocks (operand counts: docs/performance.md)."""
    options = xla.compiler_options("cpu")
    assert options == {"xla_disable_hlo_passes": "cse_barrier_expander"}
    shallow, deep = _largest_loop_fusion(2, options), _largest_loop_fusion(8, options)
    assert deep == shallow, (shallow, deep)
    assert deep < 20
    assert _largest_loop_fusion(8, None) > 2 * deep  # the options are what keeps them


@pytest.mark.slow
def test_msjax_jits_compile_with_the_options():
    """The train step and the prediction function keep the blocks' barriers; a plain jit of
    the same function does not (XLA:CPU expands them away)."""
    from msjax import optim, sharding
    from msjax.configlib import ORIGINAL_LOSS
    from msjax.evaluation import inference
    from msjax.methods import METHODS
    from msjax.training.step import jit_train_step, make_train_step

    model = tiny_deeplabv2(num_classes=5)
    x = jnp.zeros((1, 33, 33, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    predict = inference.make_predict_fn(model)
    assert "opt-barrier" in predict.lower(variables, x).compile().as_text()
    plain = jax.jit(lambda v, x: model.apply(v, x, train=False))
    assert "opt-barrier" not in plain.lower(variables, x).compile().as_text()

    rules = optim.faithful_rules(aspp_branches=2, aux_head_trained=False)
    tx, _ = optim.make_optimizer(dict(optim.ORIGINAL_OPTIM, rules=rules), variables["params"])
    state = jax.eval_shape(lambda v: step_state(v, tx), variables)
    train_step = make_train_step(model, tx, METHODS["maxsquare"], ORIGINAL_LOSS)
    step = jit_train_step(train_step, sharding.make_mesh(),
                          adapting=True)  # fmt: skip
    source = {"image": x, "label": jnp.zeros((1, 33, 33), jnp.int32)}
    assert "opt-barrier" in step.lower(state, source, {"image": x}).compile().as_text()


def step_state(variables, tx):
    from msjax.training.step import create_train_state

    return create_train_state(variables, tx)
