"""Model tests: sizes and parameter counts, layer semantics against PyTorch, BN modes, atrous."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msjax.models import DeepLabV2, feature_size, tiny_deeplabv2
from msjax.models.layers import (
    atrous_conv_space_to_batch,
    max_pool_ceil,
    normalize_batch_stats,
    resize_bilinear_align_corners,
)
from tests.reference.deeplabv2_torch import DeepLabV2Torch, forward_nhwc, randomize_


def rel_err(a, b) -> float:
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def abstract_variables(model, size=(1, 33, 33, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(size), train=False))


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "num_classes, total", [(19, 44_601_560), (16, 44_269_760), (13, 43_937_960)]
)
def test_parameter_counts(num_classes, total):
    params = abstract_variables(DeepLabV2(num_classes=num_classes))["params"]
    assert count(params) == total
    heads = count(params["layer5"]) + count(params["layer6"])
    assert total - heads == 42_500_160
    if num_classes == 19:
        assert (count(params["layer5"]), count(params["layer6"])) == (700_492, 1_400_908)


@pytest.mark.parametrize(
    "height, width, fh, fw",
    [
        (720, 1280, 91, 161),
        (512, 1024, 65, 129),
        (640, 1280, 81, 161),
        (760, 1280, 96, 161),
        (1024, 2048, 129, 257),
    ],
)
def test_output_and_feature_sizes(height, width, fh, fw):
    model = DeepLabV2()
    variables = abstract_variables(model)
    (main, aux), state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, capture_intermediates=True),
        variables,
        jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32),
    )
    assert main.shape == aux.shape == (2, height, width, 19)
    assert main.dtype == aux.dtype == jnp.float32
    for head in ("layer5", "layer6"):
        assert state["intermediates"][head]["__call__"][0].shape == (2, fh, fw, 19)
    assert (feature_size(height), feature_size(width)) == (fh, fw)


@pytest.mark.parametrize("n", range(5, 13))
def test_max_pool_ceil_mode_matches_torch(n):
    x = np.random.RandomState(n).randn(1, n, n + 3, 2).astype(np.float32)
    ref = F.max_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 3, 2, 1, ceil_mode=True)
    out = max_pool_ceil(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(out), ref.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize(
    "in_size, out_size", [((5, 7), (33, 47)), ((9, 9), (64, 64)), ((1, 4), (3, 9))]
)
def test_align_corners_resize_matches_torch(in_size, out_size):
    x = np.random.RandomState(0).randn(2, *in_size, 3).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), out_size, mode="bilinear", align_corners=True
    )
    out = resize_bilinear_align_corners(jnp.asarray(x), *out_size)
    assert rel_err(out, ref.numpy().transpose(0, 2, 3, 1)) <= 1e-6


@pytest.mark.parametrize("dilation", [2, 4, 6, 12, 18, 24])
def test_space_to_batch_atrous_equals_native(dilation):
    rng = np.random.RandomState(dilation)
    x = jnp.asarray(rng.randn(2, 13, 19, 4), jnp.float32)
    k = jnp.asarray(rng.randn(3, 3, 4, 5), jnp.float32)

    def native(x, k):
        return jax.lax.conv_general_dilated(
            x,
            k,
            (1, 1),
            ((dilation, dilation),) * 2,
            rhs_dilation=(dilation,) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    def s2b(x, k):
        return atrous_conv_space_to_batch(x, k, dilation)

    cot = jnp.asarray(rng.randn(2, 13, 19, 5), jnp.float32)
    with jax.default_matmul_precision("highest"):
        assert rel_err(s2b(x, k), native(x, k)) <= 1e-6
        g_native = jax.vjp(native, x, k)[1](cot)
        g_s2b = jax.vjp(s2b, x, k)[1](cot)
    for a, b in zip(g_s2b, g_native, strict=True):
        assert rel_err(a, b) <= 1e-6


def train_mode_apply(model):
    """Jitted training-mode forward: ((main, aux), updated batch_stats); one compilation, not
    one per operation as an eager apply makes."""
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))


def eval_mode_apply(model):
    """Jitted evaluation-mode forward: (main, aux)."""
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.fixture(scope="module")
def tiny():
    """A tiny torch reference and the same weights as msjax variables (via the converter)."""
    from msjax.weights import names

    torch_model = randomize_(DeepLabV2Torch(num_classes=4, blocks=(1, 1, 2, 1), width=8), 5)
    sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    variables = names.variables_from_state_dict(sd)
    model = tiny_deeplabv2(num_classes=4, blocks=(1, 1, 2, 1))
    return torch_model, model, variables


@pytest.mark.slow
def test_atrous_implementations_agree_in_training(tiny):
    """Whole model, train mode: outputs and gradients of native and space-to-batch agree."""
    _, model, variables = tiny
    images = jnp.asarray(np.random.RandomState(0).randn(2, 45, 61, 3), jnp.float32)

    def loss(params, images, atrous):
        main, aux = model.clone(atrous=atrous).apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )[0]
        return jnp.mean(main**2) + jnp.mean(jnp.sin(aux))

    with jax.default_matmul_precision("highest"):
        results = {
            a: jax.value_and_grad(loss, argnums=(0, 1))(variables["params"], images, a)
            for a in ("native", "space_to_batch")
        }
    (v1, g1), (v2, g2) = results["native"], results["space_to_batch"]
    assert abs(float(v1) - float(v2)) <= 1e-6 * abs(float(v1))
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1), strict=True):
        if np.any(np.asarray(b)):
            assert rel_err(a, b) <= 1e-5


def test_per_image_batch_equals_sequential_single_images(tiny):
    _, model, variables = tiny
    images = jnp.asarray(np.random.RandomState(1).randn(4, 33, 41, 3), jnp.float32)
    apply = train_mode_apply(model)
    with jax.default_matmul_precision("highest"):
        (main, aux), batched = apply(variables, images)
        state, outs = dict(variables), []
        for i in range(4):
            out, updated = apply(state, images[i : i + 1])
            state = {"params": variables["params"], **updated}
            outs.append(out)
    # Same arithmetic in another summation order: float32 round-off only.
    assert rel_err(main, jnp.concatenate([o[0] for o in outs])) <= 1e-5
    assert rel_err(aux, jnp.concatenate([o[1] for o in outs])) <= 1e-5
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(state["batch_stats"]), strict=True):
        assert rel_err(a, b) <= 1e-5


def test_batch_mode_matches_torch_train_mode(tiny):
    torch_model, model, variables = tiny
    images = np.random.RandomState(2).randn(3, 35, 42, 3).astype(np.float32)
    reference = copy.deepcopy(torch_model).train()
    ref = forward_nhwc(reference, images, per_image=False)
    with jax.default_matmul_precision("highest"):
        out, updated = train_mode_apply(model.clone(bn_mode="batch"))(variables, images)
    assert rel_err(out[0], ref[0]) <= 1e-5 and rel_err(out[1], ref[1]) <= 1e-5
    ref_var = reference.layer2[0].bn3.running_var.numpy()
    assert rel_err(updated["batch_stats"]["layer2_0"]["bn3"]["var"], ref_var) <= 1e-5


def test_frozen_mode_uses_running_stats_and_updates_nothing(tiny):
    torch_model, model, variables = tiny
    images = np.random.RandomState(3).randn(2, 33, 33, 3).astype(np.float32)
    ref = forward_nhwc(copy.deepcopy(torch_model).eval(), images, per_image=False)
    with jax.default_matmul_precision("highest"):
        out, updated = train_mode_apply(model.clone(bn_mode="frozen"))(variables, images)
    assert rel_err(out[0], ref[0]) <= 1e-5
    for a, b in zip(
        jax.tree.leaves(updated), jax.tree.leaves(variables["batch_stats"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_faithful_heads_sum_two_branches_and_leave_two_without_gradient(tiny):
    _, model, variables = tiny
    images = jnp.asarray(np.random.RandomState(4).randn(1, 33, 33, 3), jnp.float32)

    def loss(params, branches):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        main, aux = model.clone(aspp_branches=branches).apply(v, images, train=False)
        return jnp.sum(main) + jnp.sum(aux)

    grads = jax.grad(loss)(variables["params"], 2)
    for head in ("layer5", "layer6"):
        assert set(variables["params"][head]) == {f"conv2d_list_{i}" for i in range(4)}
        for i in range(4):
            g = grads[head][f"conv2d_list_{i}"]["kernel"]
            assert bool(jnp.any(g != 0)) == (i < 2)
    assert abs(float(loss(variables["params"], 4) - loss(variables["params"], 2))) > 1e-3


def test_bfloat16_compute_gives_float32_logits_close_to_float32(tiny):
    _, model, variables = tiny
    images = jnp.asarray(np.random.RandomState(5).randn(2, 33, 45, 3), jnp.float32)
    ref = eval_mode_apply(model)(variables, images)
    out = eval_mode_apply(model.clone(dtype=jnp.bfloat16))(variables, images)
    assert out[0].dtype == jnp.float32
    # bfloat16 has an 8-bit mantissa (relative step 2^-8 = 0.4%) per operation.
    assert rel_err(out[0], ref[0]) <= 5e-2 and rel_err(out[1], ref[1]) <= 5e-2


@pytest.mark.parametrize(
    "field, value", [("bn_mode", "group"), ("atrous", "fft"), ("aspp_branches", 3)]
)
def test_invalid_fields_list_allowed_values(field, value):
    with pytest.raises(ValueError, match=f"DeepLabV2.{field} must be one of"):
        abstract_variables(tiny_deeplabv2(**{field: value}))


@pytest.mark.parametrize("axes", [(1, 2), (0, 1, 2)])
def test_batchnorm_closed_form_backward_equals_autodiff(axes):
    """The custom VJP of training-mode BN against autodiff of the plain formula (float64),
    with cotangents on all three outputs: y, and the statistics that feed the running
    averages."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (2, 5, 7, 4))
    scale, bias = rng.normal(size=4), rng.normal(size=4)
    stats_shape = (2, 1, 1, 4) if axes == (1, 2) else (1, 1, 1, 4)
    weights = [rng.normal(size=s) for s in (x.shape, stats_shape, stats_shape)]

    def plain(x, scale, bias):
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var

    def loss(fn):
        return lambda *a: sum(jnp.sum(w * o) for w, o in zip(weights, fn(*a), strict=True))

    with jax.enable_x64():
        x, scale, bias = jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias)
        weights = [jnp.asarray(w) for w in weights]
        custom = lambda x, s, b: normalize_batch_stats(x, s, b, axes, 1e-5)  # noqa: E731
        for a, b in zip(custom(x, scale, bias), plain(x, scale, bias), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        got = jax.grad(loss(custom), argnums=(0, 1, 2))(x, scale, bias)
        want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_batchnorm_backward_stores_a_bfloat16_input_as_bfloat16():
    """In bfloat16 the closed-form backward keeps the BN input itself (half the memory of
    a float32 copy of x - mean) and still equals autodiff of the float32 formula."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(2.0, 3.0, (2, 5, 7, 4)), jnp.bfloat16)
    scale = jnp.asarray(rng.normal(size=4), jnp.float32)
    bias = jnp.asarray(rng.normal(size=4), jnp.float32)
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def plain(x, scale, bias):
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
        return (xf - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

    def custom(x, scale, bias):
        return normalize_batch_stats(x, scale, bias, (1, 2), 1e-5)[0]

    _, vjp_fn = jax.vjp(custom, x, scale, bias)
    stored = [leaf for leaf in jax.tree.leaves(vjp_fn) if leaf.shape == x.shape]
    assert stored and all(leaf.dtype == jnp.bfloat16 for leaf in stored), [
        leaf.dtype for leaf in stored
    ]
    np.testing.assert_allclose(custom(x, scale, bias), plain(x, scale, bias), rtol=1e-6, atol=1e-6)
    got = jax.grad(lambda *a: jnp.sum(weights * custom(*a)), argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(lambda *a: jnp.sum(weights * plain(*a)), argnums=(0, 1, 2))(x, scale, bias)
    assert got[0].dtype == jnp.bfloat16
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(g, w, rtol=1e-2, atol=1e-2 * np.abs(w).max())
