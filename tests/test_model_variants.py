"""Speed variants of DeepLabV2 compute the same function: remat and atrous='auto'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.models import DeepLabV2, tiny_deeplabv2
from msjax.models.layers import resolve_atrous
from tests.helpers import he_random_variables


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _loss_grads_stats(model, variables, images):
    def loss(params):
        (main, aux), updated = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(main**2) + jnp.mean(jnp.sin(aux)), updated["batch_stats"]

    with jax.default_matmul_precision("highest"):
        (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return value, grads, stats


@pytest.fixture(scope="module")
def tiny_reference():
    """A tiny model, its variables, a batch, and the default implementation's results."""
    model = tiny_deeplabv2(num_classes=4, blocks=(1, 1, 2, 1))
    variables = he_random_variables(model)
    images = jnp.asarray(np.random.RandomState(0).randn(2, 41, 53, 3) * 50, jnp.float32)
    return model, variables, images, _loss_grads_stats(model, variables, images)


@pytest.mark.parametrize(
    "variant", [dict(remat=True), dict(remat=True, remat_policy="convs"), dict(atrous="auto")]
)
def test_variants_give_the_same_loss_gradients_and_statistics(tiny_reference, variant):
    model, variables, images, (v1, g1, s1) = tiny_reference
    v2, g2, s2 = _loss_grads_stats(model.clone(**variant), variables, images)
    assert abs(float(v1) - float(v2)) <= 1e-6 * abs(float(v1))
    # Same arithmetic, other fusion and summation orders: float32 round-off only.
    for a, b in zip(jax.tree.leaves((g2, s2)), jax.tree.leaves((g1, s1)), strict=True):
        if np.any(np.asarray(b)):
            assert rel_err(a, b) <= 1e-4


def test_auto_resolves_from_the_platform_compiled_for():
    assert resolve_atrous("auto", "cpu") == "native"
    assert resolve_atrous("auto", "gpu") == "space_to_batch"
    assert resolve_atrous("auto", "tpu") == "native"
    assert resolve_atrous("space_to_batch", "cpu") == "space_to_batch"


def test_platform_field_decides_atrous_and_barriers_not_the_host():
    """A model for another platform, traced on this CPU host, makes that platform's choices:
    no XLA:CPU barriers, and space-to-batch dilation for 'gpu' under atrous='auto'."""
    x = jnp.zeros((1, 33, 33, 3))

    def hlo(model):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
        return jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables).as_text()

    cpu, gpu = hlo(tiny_deeplabv2(platform="cpu")), hlo(tiny_deeplabv2(platform="gpu"))
    assert "optimization_barrier" in cpu and "optimization_barrier" not in gpu
    # Dilated 3x3 convolutions: a kernel dilation above 1 in the native form only.
    assert "rhs_dilate = [2, 2]" in cpu and "rhs_dilate = [2, 2]" not in gpu


def test_invalid_atrous_lists_allowed_values():
    with pytest.raises(ValueError, match="DeepLabV2.atrous must be one of"):
        jax.eval_shape(
            lambda: DeepLabV2(atrous="fft").init(
                jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False
            )
        )
