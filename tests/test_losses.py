"""Tests for msjax.losses: parity with the PyTorch references, properties, jit and bfloat16.

Parity: values and gradients with respect to the logits, computed by torch autograd on the
references in tests/reference/losses_torch.py (NCHW) and by jax.grad on msjax (NHWC), must
agree to a relative error of 1e-5 in float32. For gradients the error is measured against
the largest reference entry (``max|g_jax - g_torch| / max|g_torch|``): an element-wise
ratio is meaningless for entries that are zero up to rounding.
"""

import functools
import zlib

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msjax import losses
from tests.reference import losses_torch as ref

RTOL = 1e-5
HEIGHT, WIDTH = 9, 13  # odd on purpose: no size divides evenly
BATCHES = (1, 2, 3)
CLASSES = (13, 16, 19)
# Hypothesis examples call compiled code: no deadline, few examples, reproducible in CI.
PROPERTY_SETTINGS = settings(deadline=None, max_examples=15, derandomize=True)

# name -> (msjax function of (logits..., labels?), torch reference, number of logit inputs,
#          whether it takes labels)
LOSSES = {
    "cross_entropy": (losses.cross_entropy, ref.cross_entropy, 1, True),
    "max_square": (losses.max_square, ref.max_square, 1, False),
    "iw_max_square": (losses.iw_max_square, ref.iw_max_square, 1, False),
    "entropy": (losses.entropy, ref.entropy, 1, False),
    "hard_pseudo_label": (losses.hard_pseudo_label, ref.hard_pseudo_label, 1, False),
    "multi_level_guidance": (losses.multi_level_guidance, ref.multi_level_guidance, 2, False),
}
# Losses where pixels can be ignored: parity runs with none, some and all of them ignored.
IGNORING = ("cross_entropy", "hard_pseudo_label", "multi_level_guidance")


def make_inputs(name, n, c, mode, seed=0, height=HEIGHT, width=WIDTH):
    """Random float32 NHWC logits (and labels) for one loss.

    mode 'some' mixes confident and uncertain pixels (per-pixel scale of a one-hot bump)
    and, for the ignoring losses, ignores part of the pixels; 'none' and 'all' ignore none
    or all of them (through labels for CE, through confidence for the pseudo-label
    losses); 'extreme' draws logits uniformly in [-100, 100] with exact +-100 entries.
    """
    # crc32, not hash(): str hashes change between processes.
    rng = np.random.default_rng([seed, n, c, zlib.crc32(f"{name}/{mode}".encode())])
    shape = (n, height, width)
    cls = rng.integers(0, c, shape)

    def logits_for(cls):
        if mode == "extreme":
            z = rng.uniform(-100.0, 100.0, (*shape, c))
            z[..., 0] = np.where(rng.random(shape) < 0.2, 100.0, z[..., 0])
            z[..., -1] = np.where(rng.random(shape) < 0.2, -100.0, z[..., -1])
            return z.astype(np.float32)
        noise = rng.standard_normal((*shape, c))
        if name in IGNORING[1:] and mode == "all":
            return (0.1 * noise).astype(np.float32)  # max p ~ 1/C: nothing confident
        if name in IGNORING[1:] and mode == "none":
            scale = np.full(shape, 25.0)  # max p ~ 1: every pixel kept
        else:
            scale = rng.uniform(0.0, 12.0, shape)
        return (scale[..., None] * np.eye(c)[cls] + noise).astype(np.float32)

    inputs = [logits_for(cls)]
    if name == "multi_level_guidance":
        # The aux head mostly agrees with the main head, sometimes not.
        cls_aux = np.where(rng.random(shape) < 0.7, cls, rng.integers(0, c, shape))
        inputs.append(logits_for(cls_aux))
    if name == "cross_entropy":
        labels = rng.integers(0, c, shape)
        if mode in ("some", "extreme"):
            labels = np.where(rng.random(shape) < 0.3, 255, labels)
        elif mode == "all":
            labels = np.full(shape, 255)
        inputs.append(labels.astype(np.int32))
    return inputs


@functools.cache
def jax_value_and_grad(name):
    """Jitted (value, grads w.r.t. every logits input) for one msjax loss."""
    fn, _, num_logits, _ = LOSSES[name]
    return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(num_logits))))


def torch_value_and_grad(name, inputs):
    """Reference value and NHWC gradients through torch autograd on NCHW tensors."""
    _, fn, num_logits, _ = LOSSES[name]
    logits = [
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        for x in inputs[:num_logits]
    ]
    rest = [torch.from_numpy(x.astype(np.int64)) for x in inputs[num_logits:]]
    value = fn(*logits, *rest)
    value.backward()
    grads = [
        np.zeros_like(x) if t.grad is None else t.grad.numpy().transpose(0, 2, 3, 1)
        for x, t in zip(inputs, logits, strict=False)
    ]
    return float(value.detach()), grads


def relative_error(actual, expected):
    """max|a - e| / max|e|, or max|a| when the reference is exactly zero."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    return diff / scale if scale > 0 else np.max(np.abs(actual))


def parity_errors(name, n, c, mode):
    """(value error, gradient error, jax value, jax grads) of msjax against torch."""
    inputs = make_inputs(name, n, c, mode)
    with jax.default_matmul_precision("highest"):
        value, grads = jax_value_and_grad(name)(*inputs)
    ref_value, ref_grads = torch_value_and_grad(name, inputs)
    grad_err = max(relative_error(g, r) for g, r in zip(grads, ref_grads, strict=True))
    return relative_error(value, ref_value), grad_err, value, grads


PARITY_CASES = [
    (name, n, c, mode)
    for name in LOSSES
    for mode in (("none", "some", "all", "extreme") if name in IGNORING else ("some", "extreme"))
    for n in BATCHES
    for c in CLASSES
]


@pytest.mark.parametrize(("name", "n", "c", "mode"), PARITY_CASES)
def test_parity_with_torch(name, n, c, mode):
    value_err, grad_err, value, grads = parity_errors(name, n, c, mode)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert value_err <= RTOL, f"value relative error {value_err:.2e}"
    assert grad_err <= RTOL, f"gradient relative error {grad_err:.2e}"
    if mode == "all":
        assert value == 0.0 and all(np.all(g == 0.0) for g in grads)


def test_parity_cases_really_ignore():
    """The 'none'/'some'/'all' inputs of the pseudo-label losses keep what they claim."""
    for name in IGNORING[1:]:
        kept = {}
        for mode in ("none", "some", "all"):
            inputs = make_inputs(name, 2, 19, mode)
            p = jax.nn.softmax(jnp.asarray(inputs[0]), axis=-1).max(-1)
            if name == "multi_level_guidance":
                p = jnp.maximum(p, jax.nn.softmax(jnp.asarray(inputs[1]), axis=-1).max(-1))
            kept[mode] = float(jnp.mean(p > 0.95))
        assert kept["none"] == 1.0 and kept["all"] == 0.0 and 0.1 < kept["some"] < 0.9


def test_original_iw_breaks_for_batch_above_one():
    """The verbatim original cannot broadcast its [N, H, W] weights; msjax loops per image."""
    logits = torch.randn(2, 19, 5, 7)
    assert torch.equal(ref.iw_max_square_original(logits[:1]), ref.iw_max_square(logits[:1]))
    with pytest.raises(RuntimeError):
        ref.iw_max_square_original(logits)


def test_iw_batch_is_mean_of_single_images():
    logits = jnp.asarray(make_inputs("iw_max_square", 3, 19, "some")[0])
    singles = [losses.iw_max_square(logits[i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(losses.iw_max_square(logits), np.mean(singles), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Properties.


@functools.cache
def _dloss_dp(loss_name):
    """Per-pixel derivative of a loss w.r.t. the probability p of class 0 (binary case).

    Logits (log p, log(1 - p)) have softmax exactly (p, 1 - p); the loss is a mean over
    pixels, so the gradient is multiplied back by the number of pixels.
    """
    fn = getattr(losses, loss_name)

    def loss_of_p(p):
        logits = jnp.stack([jnp.log(p), jnp.log1p(-p)], axis=-1).reshape(1, 1, -1, 2)
        return fn(logits)

    return jax.jit(lambda p: jax.grad(loss_of_p)(p) * p.shape[0])


probabilities = st.lists(st.floats(0.6, 0.999), min_size=3, max_size=3, unique=True).filter(
    lambda ps: np.min(np.diff(np.sort(ps))) >= 0.02
)


@PROPERTY_SETTINGS
@given(probabilities)
def test_max_square_gradient_linear_entropy_not(ps):
    p = jnp.asarray(np.sort(ps), jnp.float32)
    dp = np.diff(np.asarray(p, np.float64))
    # Max squares: |dL/dp| rises with p along a straight line (equal secant slopes).
    g_ms = np.abs(np.asarray(_dloss_dp("max_square")(p), np.float64))
    slopes_ms = np.diff(g_ms) / dp
    assert np.all(slopes_ms > 0)
    np.testing.assert_allclose(slopes_ms[0], slopes_ms[1], rtol=1e-3)
    # Entropy: |dL/dp| is convex in p (secant slopes strictly increase): not linear, and
    # ever steeper towards p = 1, where easy pixels sit.
    g_ent = np.abs(np.asarray(_dloss_dp("entropy")(p), np.float64))
    slopes_ent = np.diff(g_ent) / dp
    assert np.all(slopes_ent > 0)
    assert slopes_ent[1] > slopes_ent[0] * (1 + 1e-2)


IW_SHAPE = (2, 7, 9)
IW_CLASSES = 5


@PROPERTY_SETTINGS
@given(
    hnp.arrays(np.int32, IW_SHAPE, elements=st.integers(0, IW_CLASSES - 1)),
    st.integers(0, 2**16),
)
def test_iw_weights_constant_per_class_and_smaller_when_frequent(cls, seed):
    rng = np.random.default_rng(seed)
    logits = 8.0 * np.eye(IW_CLASSES)[cls] + 0.1 * rng.standard_normal((*IW_SHAPE, IW_CLASSES))
    weights = np.asarray(losses.iw_pixel_weights(jnp.asarray(logits, jnp.float32)))
    for image_cls, image_w in zip(cls, weights, strict=True):
        per_class = {}
        for k in np.unique(image_cls):
            w = image_w[image_cls == k]
            assert np.all(w == w[0])  # constant within a predicted class
            per_class[k] = (np.sum(image_cls == k), w[0])
        for count_a, w_a in per_class.values():
            for count_b, w_b in per_class.values():
                if count_a > count_b:
                    assert w_a < w_b  # more frequent class, smaller weight


@functools.cache
def _jitted_loss(name):
    return jax.jit(LOSSES[name][0])


@pytest.mark.parametrize("name", list(LOSSES))
@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**16), spread=st.floats(0.0, 20.0))
def test_invariant_to_per_pixel_logit_shift(name, seed, spread):
    inputs = make_inputs(name, 2, 13, "some", seed=seed, height=5, width=7)
    num_logits = LOSSES[name][2]
    rng = np.random.default_rng(seed)
    shifted = [
        (x + rng.uniform(-spread, spread, x.shape[:-1] + (1,))).astype(np.float32)
        if i < num_logits
        else x
        for i, x in enumerate(inputs)
    ]
    fn = _jitted_loss(name)
    np.testing.assert_allclose(fn(*shifted), fn(*inputs), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Compilation, dtypes and selection.


@pytest.mark.parametrize("name", list(LOSSES))
def test_jit_matches_eager(name):
    inputs = make_inputs(name, 2, 19, "some")
    jitted = _jitted_loss(name)(*inputs)
    with jax.disable_jit():
        eager = LOSSES[name][0](*inputs)
    assert jitted.dtype == jnp.float32 and jitted.shape == ()
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_bfloat16_logits_match_float32(name):
    inputs = make_inputs(name, 2, 19, "some")
    num_logits = LOSSES[name][2]
    low = [jnp.asarray(x, jnp.bfloat16) if i < num_logits else x for i, x in enumerate(inputs)]
    fn = _jitted_loss(name)
    value = fn(*low)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, fn(*inputs), rtol=1e-2)
    grads = jax.grad(LOSSES[name][0])(*low)
    assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


def test_multi_level_guidance_trains_aux_head_only():
    main, aux = make_inputs("multi_level_guidance", 1, 19, "some")
    g_main, g_aux = jax.grad(losses.multi_level_guidance, argnums=(0, 1))(main, aux)
    assert np.all(np.asarray(g_main) == 0.0) and np.any(np.asarray(g_aux) != 0.0)


def test_cross_entropy_custom_ignore_index():
    logits, labels = make_inputs("cross_entropy", 2, 13, "some")
    relabelled = np.where(labels == 255, -1, labels)
    np.testing.assert_allclose(
        losses.cross_entropy(logits, relabelled, ignore_index=-1),
        losses.cross_entropy(logits, labels),
        rtol=1e-6,
    )


def test_easy_gradient_share_matches_the_binary_closed_form():
    """Binary pixels with logits (log p, log(1-p)): each loss's logit gradient in closed form.

    Per pixel, |d entropy / dz| is proportional to p(1-p)|log(p/(1-p))| and |d maxsquare /
    dz| to p(1-p)|2p-1| (same constant for all pixels), so the easy pixels' shares follow.
    """
    p = np.concatenate([np.linspace(0.55, 0.89, 40), np.linspace(0.91, 0.9995, 60)])
    logits = jnp.asarray(np.stack([np.log(p), np.log1p(-p)], -1).reshape(1, 4, 25, 2), jnp.float32)
    easy = p > losses.EASY_PROBABILITY
    for fn, magnitude in (
        (losses.entropy, p * (1 - p) * np.abs(np.log(p / (1 - p)))),
        (losses.max_square, p * (1 - p) * np.abs(2 * p - 1)),
    ):
        share, easy_pixels, mean = losses.easy_gradient_share(fn, logits)
        assert float(easy_pixels) == pytest.approx(easy.mean())
        assert float(share) == pytest.approx(magnitude[easy].sum() / magnitude.sum(), rel=1e-4)
        # Both losses are means over N C H W (C = 2 here): sqrt(2) |dL/dz_1| with 1 / (2 M).
        want = np.sqrt(2) * magnitude.mean() / (2 * p.size)
        assert float(mean) == pytest.approx(want, rel=1e-4)
    # The paper's argument, in logit space too: entropy gives the easy pixels more.
    minent, _, _ = losses.easy_gradient_share(losses.entropy, logits)
    maxsquare, _, _ = losses.easy_gradient_share(losses.max_square, logits)
    assert float(minent) > float(maxsquare) + 0.05
    # A loss with no gradient at all (uniform predictions) gives share 0, not NaN.
    share, _, _ = losses.easy_gradient_share(losses.max_square, jnp.zeros((1, 2, 2, 3)))
    assert float(share) == 0.0
