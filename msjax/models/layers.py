"""Building blocks of the DeepLabV2 network: convolutions, BatchNorm modes, pooling, upsampling.

Everything is NHWC. Parameter and statistic names follow Flax conventions (`kernel`, `bias`,
`scale`, `mean`, `var`) so that a PyTorch state_dict converts by a rename plus a transpose.

Two facts of the original network shape this file:
- PyTorch's BatchNorm in train mode at batch size 1 normalises every image by its own
  statistics and updates the running variance with the *unbiased* variance. `BatchNorm` in
  mode `per_image` reproduces that for any batch size.
- The original upsamples logits with `align_corners=True`, which `jax.image.resize` does not
  implement; `resize_bilinear_align_corners` does, as two small interpolation matmuls.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

Dtype = Any

BN_MODES = ("per_image", "batch", "frozen")
ATROUS_IMPLS = ("native", "space_to_batch", "auto")
CONV_OUTPUT = "conv_output"  # the checkpoint name of every convolution's output

# What atrous='auto' means on each platform, chosen by scripts/bench_atrous.py and, for TPU,
# scripts/compile_check.py (docs/performance.md): on CPU native dilation is as fast or
# faster; on GPU XLA computes a native dilated convolution's kernel gradient as one
# convolution with a whole-feature-map window, and space-to-batch is several times faster;
# on TPU the native step compiles to fewer bytes and cycles. Unlisted platforms get native.
AUTO_ATROUS = {
    "cpu": "native",
    "gpu": "space_to_batch",
    "cuda": "space_to_batch",
    "tpu": "native",
}


def resolve_atrous(atrous: str, platform: str) -> str:
    """The dilated-convolution implementation for `atrous` on `platform`.

    Args:
      atrous: 'native', 'space_to_batch' or 'auto' (`AUTO_ATROUS[platform]`, else 'native').
      platform: the platform the model is compiled for ('cpu', 'gpu', 'tpu', ...).

    Returns:
      'native' or 'space_to_batch'.
    """
    if atrous != "auto":
        return atrous
    return AUTO_ATROUS.get(platform, "native")


def wants_fusion_barriers(platform: str) -> bool:
    """Whether blocks should store their outputs behind a fusion barrier (`materialize`).

    Only XLA:CPU needs it (see `materialize`); a barrier's effect elsewhere is unmeasured.
    """
    return platform == "cpu"


_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def normal_init(stddev: float = 0.01):
    """The original's convolution initialiser: normal(0, stddev)."""
    return nn.initializers.normal(stddev)


def torch_default_bias_init(fan_in: int):
    """PyTorch's default conv bias initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def atrous_conv_space_to_batch(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """A stride-1 'same' dilated convolution computed by phase decomposition.

    A 3x3 convolution with dilation d and padding d only ever combines pixels whose row and
    column indices agree modulo d. Splitting the image into its d*d phases (space-to-batch)
    turns it into an ordinary, undilated 3x3 convolution with padding 1 on each phase; the
    phases are then interleaved back (batch-to-space). Numerically it is the same sum of
    products as the native dilated convolution.

    Args:
      x: [N, H, W, C] input.
      kernel: [3, 3, C, O] kernel (any odd size k works, padding (k-1)/2 * d).
      dilation: d >= 1.

    Returns:
      [N, H, W, O], equal to `lax.conv_general_dilated(x, kernel, 1, padding=d, rhs_dilation=d)`.
    """
    n, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    d = dilation
    hp, wp = -(-h // d) * d, -(-w // d) * d
    # Zero rows/columns appended at the end are exactly the original's zero padding.
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    x = x.reshape(n, hp // d, d, wp // d, d, c).transpose(0, 2, 4, 1, 3, 5)
    x = x.reshape(n * d * d, hp // d, wp // d, c)
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=_DIMENSION_NUMBERS,
    )
    o = y.shape[-1]
    y = y.reshape(n, d, d, hp // d, wp // d, o).transpose(0, 3, 1, 4, 2, 5)
    return y.reshape(n, hp, wp, o)[:, :h, :w, :]


def _conv(x, kernel, stride: int, padding: int, dilation: int):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=_DIMENSION_NUMBERS,
    )


def materialize(x: jax.Array, barrier: bool) -> jax.Array:
    """`x` unchanged; with `barrier`, computed once and stored behind an XLA fusion barrier.

    XLA:CPU fuses cheap elementwise producers into every consumer, duplicating them; along
    a ResNet's residual path (BN, addition, ReLU of each block feeding the next block's
    addition) that recomputes all earlier blocks inside each later one.
    `lax.optimization_barrier` stops it, provided XLA keeps the barrier, which msjax's jitted
    functions ask for on CPU (`msjax.xla.compiler_options`). Same numbers in every case.
    """
    return lax.optimization_barrier(x) if barrier else x


def pixel_matmul(x: jax.Array, weights: jax.Array) -> jax.Array:
    """A 1x1 convolution: `x` [N, H, W, C] times `weights` [C, O], as one [N*H*W, C] matmul.

    Flattening the pixels first matters on XLA:CPU: the kernel gradient is then a plain
    [P, C]^T [P, O] matmul, whereas the 4-D einsum's gradient contracts over (n, h, w) and XLA
    transposes the whole activation gradient to channel-major before a slower dot
    (docs/performance.md).
    """
    n, h, w, c = x.shape
    y = jnp.dot(x.reshape(n * h * w, c), weights)
    return y.reshape(n, h, w, weights.shape[-1])


class Conv(nn.Module):
    """A square convolution with PyTorch semantics (symmetric padding, no bias by default).

    1x1 convolutions are computed as a strided slice plus a matmul: it is the same
    arithmetic, and XLA:CPU differentiates matmuls far faster than convolutions
    (docs/performance.md). Dilated 3x3 convolutions use the implementation named by
    `atrous`.

    Attributes:
      features: output channels.
      kernel_size: k (square kernel).
      stride: spatial stride.
      padding: symmetric zero padding; PyTorch's `padding` argument.
      dilation: kernel dilation; PyTorch's `dilation` argument.
      use_bias: add a bias (initialised as PyTorch does by default).
      atrous: 'native' or 'space_to_batch' for dilated convolutions (resolved: see
        `resolve_atrous`).
      dtype: compute dtype. param_dtype: parameter dtype.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    use_bias: bool = False
    atrous: str = "native"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", normal_init(0.01), (k, k, in_features, self.features), self.param_dtype
        )
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if k == 1 and self.padding == 0:
            # PyTorch's strided 1x1 convolution samples rows/cols 0, s, 2s, ...
            x = x[:, :: self.stride, :: self.stride, :]
            y = pixel_matmul(x, kernel[0, 0])
        elif (
            self.atrous == "space_to_batch"
            and self.dilation > 1
            and self.stride == 1
            and self.padding == self.dilation * (k // 2)
        ):
            y = atrous_conv_space_to_batch(x, kernel, self.dilation)
        else:
            y = _conv(x, kernel, self.stride, self.padding, self.dilation)
        if self.use_bias:
            bias = self.param(
                "bias",
                torch_default_bias_init(in_features * k * k),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        # The name lets a rematerialised block keep this output (resnet.REMAT_POLICIES).
        return checkpoint_name(y, CONV_OUTPUT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_batch_stats(x, scale, bias, axes: tuple[int, ...], epsilon: float):
    """Training-mode BN over `axes`: (y, mean, biased var), with a closed-form backward.

    The same function autodiff would differentiate, but its backward takes two reductions
    over x instead of the chain autodiff builds through mean, variance and rsqrt; on XLA:CPU
    that makes BN's backward pass markedly cheaper (docs/performance.md). The statistics and
    y are computed in the dtype of `scale` (float32, or float64 in exact tests) whatever x's
    dtype, and mean and var keep the reduced axes. The backward keeps x itself, not x - mean:
    in bfloat16 that stores each BN input at half the size of a float32 copy.
    """
    return _normalize(x, scale, bias, axes, epsilon)[0]


def _normalize(x, scale, bias, axes, epsilon):
    xf = x.astype(scale.dtype)
    mean = jnp.mean(xf, axis=axes, keepdims=True)
    centred = xf - mean
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    inv = lax.rsqrt(var + epsilon)
    y = centred * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _normalize_fwd(x, scale, bias, axes, epsilon):
    # With symbolic zeros the primals arrive wrapped (value, perturbed).
    return _normalize(x.value, scale.value, bias.value, axes, epsilon)


def _normalize_bwd(axes, epsilon, residuals, cotangents):
    x, mean, inv, scale = residuals
    g, g_mean, g_var = cotangents
    if isinstance(g, SymbolicZero):
        g = jnp.zeros(x.shape, scale.dtype)
    # Recomputed exactly as in the forward pass (same operands, same operation).
    centred = x.astype(scale.dtype) - mean
    count = np.prod([centred.shape[a] for a in axes])
    x_hat = centred * inv
    not_channel = tuple(range(centred.ndim - 1))
    g_bias = jnp.sum(g, axis=not_channel)
    g_scale = jnp.sum(g * x_hat, axis=not_channel)
    mean_g = jnp.mean(g, axis=axes, keepdims=True)
    mean_g_xhat = jnp.mean(g * x_hat, axis=axes, keepdims=True)
    g_x = (inv * scale) * (g - mean_g - x_hat * mean_g_xhat)
    # The statistics are outputs too, but in training only the running averages read them:
    # their cotangents are symbolic zeros, and adding them would keep an extra float32
    # term over the whole activation alive (XLA does not drop multiplications by zero).
    if not isinstance(g_mean, SymbolicZero):
        g_x = g_x + g_mean / count
    if not isinstance(g_var, SymbolicZero):
        g_x = g_x + g_var * (2.0 / count) * centred
    return g_x.astype(x.dtype), g_scale, g_bias


normalize_batch_stats.defvjp(_normalize_fwd, _normalize_bwd, symbolic_zeros=True)


class BatchNorm(nn.Module):
    """BatchNorm with the three modes msjax supports.

    - `per_image` (faithful to the original's batch size 1): in training, each image is
      normalised by its own spatial mean and biased variance; the running statistics are
      updated as if the images had gone through PyTorch one at a time, in batch order:
      `r <- (1 - m) r + m * s_i` for i = 1..N, with the unbiased variance.
    - `batch`: statistics over the whole (global) batch; the running variance is unbiased
      over N*H*W values, as PyTorch does.
    - `frozen`: running statistics always; nothing is updated (the optimizer also keeps the
      affine parameters fixed).

    In evaluation (`train=False`) every mode uses the running statistics. Moments and the
    normalisation are computed in float32 (float64 if the compute dtype is float64).

    Attributes:
      mode: one of BN_MODES.
      momentum: PyTorch-style momentum (weight of the new statistic), 0.1.
      epsilon: 1e-5 as PyTorch.
    """

    mode: str = "per_image"
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        # float32 statistics for float32/bfloat16 compute; float64 stays float64 (exact tests).
        stats_dtype = jnp.promote_types(self.dtype, jnp.float32)
        use_batch_stats = train and self.mode != "frozen"
        scale, bias = scale.astype(stats_dtype), bias.astype(stats_dtype)
        if not use_batch_stats:
            inv = lax.rsqrt(ra_var.value + self.epsilon) * scale
            return ((x.astype(stats_dtype) - ra_mean.value) * inv + bias).astype(self.dtype)
        axes = (1, 2) if self.mode == "per_image" else (0, 1, 2)
        y, mean, var = normalize_batch_stats(x, scale, bias, axes, self.epsilon)
        if self.is_mutable_collection("batch_stats") and not self.is_initializing():
            # mean and var keep the reduced axes: [N, 1, 1, C] per image, [1, 1, 1, C] batch.
            stats_shape = (x.shape[0], c) if self.mode == "per_image" else (c,)
            self._update_running_stats(
                ra_mean, ra_var, mean.reshape(stats_shape), var.reshape(stats_shape), x.shape
            )
        return y.astype(self.dtype)

    def _update_running_stats(self, ra_mean, ra_var, mean, var, shape) -> None:
        n, h, w, c = shape
        m = self.momentum
        if self.mode == "per_image":
            count = h * w
            mean, var = mean.reshape(n, c), var.reshape(n, c)
            # Image i of N is the (i+1)-th of N sequential PyTorch updates: its statistic is
            # multiplied by (1-m) once for each later image.
            weights = m * (1.0 - m) ** jnp.arange(n - 1, -1, -1, dtype=mean.dtype)
            decay = (1.0 - m) ** n
            unbiased = var * (count / max(count - 1, 1))
            ra_mean.value = decay * ra_mean.value + weights @ mean
            ra_var.value = decay * ra_var.value + weights @ unbiased
        else:
            count = n * h * w
            unbiased = var * (count / max(count - 1, 1))
            ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
            ra_var.value = (1.0 - m) * ra_var.value + m * unbiased


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """PyTorch `MaxPool2d(window, stride, padding, ceil_mode=True)` in NHWC.

    Ceil mode adds an extra output whenever a partial window remains, provided it starts
    inside the input or the left padding; it is floor-mode pooling with extra right padding
    (for window 3, stride 2, pad 1: even n -> padding (1, 2), odd n -> (1, 1)).
    """

    def pads(n: int) -> tuple[int, int]:
        out = -(-(n + 2 * padding - window) // stride) + 1
        if (out - 1) * stride >= n + padding:
            out -= 1
        return padding, (out - 1) * stride + window - n - padding

    _, h, w, _ = x.shape
    # A Python -inf init lets JAX recognise the max monoid (differentiable reduce_window_max).
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        window_dimensions=(1, window, window, 1),
        window_strides=(1, stride, stride, 1),
        padding=((0, 0), pads(h), pads(w), (0, 0)),
    )


def align_corners_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out_size, in_size] linear-interpolation weights with align_corners=True semantics."""
    if out_size == 1 or in_size == 1:
        src = np.zeros((out_size,), np.float64)
    else:
        src = np.arange(out_size, dtype=np.float64) * ((in_size - 1) / (out_size - 1))
    lo = np.clip(np.floor(src).astype(np.int64), 0, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_bilinear_align_corners(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of NHWC `x` to (height, width), PyTorch `align_corners=True`.

    Separable: one interpolation matmul per axis, in float32 (float64 for float64 input) at
    full precision: the weights are exact interpolation coefficients, and reduced-precision
    matmuls would blur the logits.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    mh = jnp.asarray(align_corners_matrix(height, x.shape[1]), dtype)
    mw = jnp.asarray(align_corners_matrix(width, x.shape[2]), dtype)
    x = x.astype(dtype)
    hp = lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hp)
    return jnp.einsum("pw,nowc->nopc", mw, x, precision=hp)
