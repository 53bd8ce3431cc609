"""Speed variants of DeepLabV2 compute the same function: matmul kernel gradients, remat, 'auto'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.models import DeepLabV2, tiny_deeplabv2
from msjax.models.layers import _conv, conv_matmul_weight_grad, resolve_atrous


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize(
    "k, stride, padding, dilation",
    [(3, 1, 1, 1), (3, 1, 2, 2), (3, 2, 1, 1), (7, 2, 3, 1), (3, 1, 4, 4), (3, 1, 0, 1)],
)
def test_matmul_weight_grad_equals_xla_conv_gradients(k, stride, padding, dilation):
    rng = np.random.RandomState(k + stride + padding + dilation)
    x = jnp.asarray(rng.randn(2, 13, 17, 5), jnp.float32)
    kernel = jnp.asarray(rng.randn(k, k, 5, 6), jnp.float32)
    args = (stride, padding, dilation)
    with jax.default_matmul_precision("highest"):
        y1, vjp1 = jax.vjp(lambda x, w: _conv(x, w, *args), x, kernel)
        y2, vjp2 = jax.vjp(lambda x, w: conv_matmul_weight_grad(x, w, *args), x, kernel)
        g = jnp.asarray(rng.randn(*y1.shape), jnp.float32)
        grads1, grads2 = vjp1(g), vjp2(g)
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(grads2, grads1, strict=True):
        assert rel_err(a, b) <= 1e-5


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
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 33, 33, 3)), train=False))(
        jax.random.key(0)
    )
    images = jnp.asarray(np.random.RandomState(0).randn(2, 41, 53, 3) * 50, jnp.float32)
    return model, variables, images, _loss_grads_stats(model, variables, images)


@pytest.mark.parametrize(
    "variant", [dict(weight_grad="matmul"), dict(remat=True), dict(atrous="auto")]
)
def test_variants_give_the_same_loss_gradients_and_statistics(tiny_reference, variant):
    model, variables, images, (v1, g1, s1) = tiny_reference
    v2, g2, s2 = _loss_grads_stats(model.clone(**variant), variables, images)
    assert abs(float(v1) - float(v2)) <= 1e-6 * abs(float(v1))
    # Same arithmetic, other fusion and summation orders: float32 round-off only.
    for a, b in zip(jax.tree.leaves((g2, s2)), jax.tree.leaves((g1, s1)), strict=True):
        if np.any(np.asarray(b)):
            assert rel_err(a, b) <= 1e-4


def test_auto_resolves_from_the_default_backend():
    assert jax.default_backend() == "cpu"  # conftest forces the CPU
    assert resolve_atrous("auto") == "native"
    assert resolve_atrous("space_to_batch") == "space_to_batch"


def test_invalid_weight_grad_lists_allowed_values():
    with pytest.raises(ValueError, match="DeepLabV2.weight_grad must be one of"):
        jax.eval_shape(
            lambda: DeepLabV2(weight_grad="fft").init(
                jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False
            )
        )
