"""Inference: class probabilities at any target size, with flip and multi-scale averaging.

The network's main head (`layer6`) produces logits at feature resolution (stride 8). This
module takes those logits and upsamples them *directly* to the size the caller asks for:
- at the input size, that is exactly what the model itself returns (`model.apply(...)[0]`),
  so the original's 1024x512 protocol is reproduced bit for bit;
- at the native label size (2048x1024, the `full` protocol), it is what the evaluator most
  later papers reuse does (AdaptSegNet's: one bilinear, align-corners upsampling of the
  feature-level logits to 1024x2048), instead of upsampling a second time an already
  upsampled map.
The upsampling is the model's own `resize_bilinear_align_corners` (align_corners=True,
the original's convention), not `jax.image.resize`, whose half-pixel centres differ.

Test-time augmentation averages softmax probabilities over views:
- flip: the image and its horizontal mirror; the mirror's probabilities are upsampled to the
  target size and flipped back before averaging (the original's `--flip True`);
- scales: the input is resized by each factor with `jax.image.resize` (bicubic, antialiased),
  a step the original never takes, so no faithful choice exists; bicubic matches how the
  data sets resize images. Each view's logits are upsampled to the target size, then
  soft-maxed, then averaged.
The argmax of one unflipped view at scale 1 is the argmax of its logits, as in the original.

Everything here is jit-compatible; `make_predict_fn` and `make_eval_step` return jitted
functions with the model and every size bound statically.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msjax import xla
from msjax.errors import ConfigError
from msjax.evaluation import metrics
from msjax.models import DeepLabV2
from msjax.models.layers import resize_bilinear_align_corners

MAIN_HEAD = "layer6"


@dataclasses.dataclass(frozen=True)
class Views:
    """Test-time augmentation: which views are averaged.

    Attributes:
      flip: also run the horizontally flipped image.
      scales: input scale factors (1.0 = the image as given).
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)

    @property
    def count(self) -> int:
        """How many forward passes one image takes."""
        return len(self.scales) * (2 if self.flip else 1)

    @classmethod
    def from_flags(cls, flip: bool, scales: str) -> Views:
        """The views of the `--flip` and `--scales` flags; ConfigError for a bad scale."""
        return cls(flip=flip, scales=parse_scales(scales))

    def describe(self) -> str:
        """Short human-readable form, e.g. 'single scale' or 'flip, scales 0.75/1/1.25'."""
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales " + "/".join(f"{s:g}" for s in self.scales))
        return ", ".join(parts) or "single scale, no flip"


# Matmul/convolution precision of inference. 'highest' is true float32: on NVIDIA GPUs the
# 'default' lets XLA use TF32 (10-bit mantissa) convolutions, faster but enough to flip the
# argmax of some pixels (PyTorch's cuDNN convolutions also default to TF32). Evaluation
# defaults to 'highest' so that a number does not depend on the GPU generation; what each
# costs and changes: docs/performance.md, "Evaluation precision on GPU".
PRECISIONS = ("highest", "default")
DEFAULT_PRECISION = "highest"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: valid values are {list(PRECISIONS)}")


# The most pixels the network is fed for one image (4096x2048, twice Cityscapes' native
# size in each direction): an upper bound checked before any work, so that a mistyped size
# is a message, not a process the kernel kills for its memory.
MAX_NETWORK_PIXELS = 4096 * 2048


def check_network_size(wh: tuple[int, int], views: Views, what: str) -> None:
    """Raises ConfigError if an input of (width, height) at the views' largest scale would
    feed the network more than MAX_NETWORK_PIXELS; `what` names the argument at fault."""
    scale = max(views.scales)
    w, h = round(wh[0] * scale), round(wh[1] * scale)
    if w * h > MAX_NETWORK_PIXELS:
        at = f" at scale {scale:g}" if scale != 1.0 else ""
        raise ConfigError(
            f"{what}: the network would see {w}x{h} pixels{at} ({w * h / 1e6:.1f} Mpx), more "
            f"than the {MAX_NETWORK_PIXELS / 1e6:.1f} Mpx (4096x2048) msjax feeds it; use a "
            "smaller input size."
        )


# One unflipped view at scale 1: the default of the original's evaluate.py, although its README's
# evaluation command passes --flip True (FLIP_VIEW).
SINGLE_VIEW = Views()
FLIP_VIEW = Views(flip=True)


def feature_logits(model: DeepLabV2, variables, images: jax.Array) -> jax.Array:
    """Main-head logits at feature resolution.

    Args:
      model: a DeepLabV2.
      variables: its {'params', 'batch_stats'}.
      images: [N, H, W, 3], normalised as the weights expect.

    Returns:
      float32 [N, h, w, C] logits of `layer6` before the model's final upsampling; the
      model's own upsampling (and its auxiliary head) is dead code here and compiled away.
    """
    _, state = model.apply(
        variables,
        images,
        train=False,
        capture_intermediates=lambda module, method: module.name == MAIN_HEAD,
    )
    (logits,) = state["intermediates"][MAIN_HEAD]["__call__"]
    return logits.astype(jnp.float32)


def _resize_input(images: jax.Array, scale: float) -> jax.Array:
    if scale == 1.0:
        return images
    n, h, w, c = images.shape
    size = (n, max(1, round(h * scale)), max(1, round(w * scale)), c)
    return jax.image.resize(images, size, method="cubic", antialias=True)


def probabilities(
    model: DeepLabV2,
    variables,
    images: jax.Array,
    target_hw: tuple[int, int],
    views: Views = SINGLE_VIEW,
) -> jax.Array:
    """Softmax probabilities averaged over the views, at the target size.

    Args:
      model: a DeepLabV2.
      variables: its variables.
      images: [N, H, W, 3] normalised images.
      target_hw: (height, width) of the output (the input size, or the label size).
      views: flip and scales to average over.

    Returns:
      float32 [N, target_h, target_w, C], summing to 1 over C.
    """
    th, tw = target_hw
    total = None
    for scale in views.scales:
        x = _resize_input(images, scale)
        batch = jnp.concatenate([x, x[:, :, ::-1]], axis=0) if views.flip else x
        logits = resize_bilinear_align_corners(feature_logits(model, variables, batch), th, tw)
        probs = jax.nn.softmax(logits, axis=-1)
        if views.flip:
            n = images.shape[0]
            probs = probs[:n] + probs[n:, :, ::-1]
        total = probs if total is None else total + probs
    return total / views.count


def predict(
    model: DeepLabV2,
    variables,
    images: jax.Array,
    target_hw: tuple[int, int] | None = None,
    views: Views = SINGLE_VIEW,
) -> tuple[jax.Array, jax.Array]:
    """Class predictions and their confidence.

    Args:
      model, variables, images, views: as in `probabilities`.
      target_hw: output (height, width); None for the input size.

    Returns:
      (labels int32 [N, h, w], confidence float32 [N, h, w]: the winning probability).
    """
    target_hw = tuple(target_hw or images.shape[1:3])
    probs = probabilities(model, variables, images, target_hw, views)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)


def make_predict_fn(
    model: DeepLabV2,
    target_hw: tuple[int, int] | None = None,
    views=SINGLE_VIEW,
    precision: str = DEFAULT_PRECISION,
):
    """A jitted `predict(variables, images) -> (labels, confidence)` with sizes bound.

    Args:
      model: a DeepLabV2 (static).
      target_hw: output size, or None for the input size.
      views: test-time augmentation.
      precision: matmul/convolution precision, one of PRECISIONS.

    Returns:
      A jitted function; it compiles once per input shape.
    """
    _check_precision(precision)

    def fn(variables, images):
        with jax.default_matmul_precision(precision):
            return predict(model, variables, images, target_hw, views)

    return jax.jit(fn, compiler_options=xla.compiler_options(model.compile_platform))


# Bytes of upsampled probabilities one band of output rows may take (`make_banded_predict_fn`).
BAND_BYTES = 64 * 2**20


def _band_labels(logits, row_weights, col_weights, *, flip: bool):
    """Labels of one band of output rows: each view's logits upsampled by the band's rows of
    the interpolation matrices, soft-maxed and summed (flipped copies flipped back)."""
    hp = jax.lax.Precision.HIGHEST
    total = None
    for x, mh, mw in zip(logits, row_weights, col_weights, strict=True):
        x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hp)
        probs = jax.nn.softmax(jnp.einsum("pw,nowc->nopc", mw, x, precision=hp), axis=-1)
        if flip:
            probs = probs[:1] + probs[1:, :, ::-1]
        total = probs if total is None else total + probs
    return jnp.argmax(total[0], axis=-1).astype(jnp.uint8)


def make_banded_predict_fn(
    model: DeepLabV2,
    target_hw: tuple[int, int],
    views=SINGLE_VIEW,
    precision: str = DEFAULT_PRECISION,
):
    """`predict`'s labels for one large image, upsampled a band of output rows at a time.

    The same computation as `make_predict_fn` (each view's feature logits upsampled
    bilinear, align corners, soft-maxed and averaged), but the upsampled probabilities
    exist for at most BAND_BYTES at a time instead of [views, H, W, classes] at once (7.6 GB
    for one view of a 10000x10000 image and 19 classes). Row bands use the rows of the same
    interpolation matrix, so the result is the full computation's up to round-off.

    Returns:
      `fn(variables, images [1, h, w, 3]) -> uint8 labels [H, W]` (a NumPy array).
    """
    import numpy as np

    from msjax.models.layers import align_corners_matrix

    _check_precision(precision)
    th, tw = target_hw
    copies = 2 if views.flip else 1
    options = xla.compiler_options(model.compile_platform)

    def features(variables, images):
        with jax.default_matmul_precision(precision):
            out = []
            for scale in views.scales:
                x = _resize_input(images, scale)
                out.append(feature_logits(
                    model, variables, jnp.concatenate([x, x[:, :, ::-1]]) if views.flip else x
                ))  # fmt: skip
            return out

    features_fn = jax.jit(features, compiler_options=options)
    band_fn = jax.jit(functools.partial(_band_labels, flip=views.flip), compiler_options=options)

    def fn(variables, images):
        logits = features_fn(variables, images)
        classes = logits[0].shape[-1]
        rows = max(1, BAND_BYTES // (copies * tw * classes * 4))
        mhs = [align_corners_matrix(th, x.shape[1]).astype(np.float32) for x in logits]
        mws = [jnp.asarray(align_corners_matrix(tw, x.shape[2]), jnp.float32) for x in logits]
        out = np.empty((th, tw), np.uint8)
        for r0 in range(0, th, rows):
            # Every band has `rows` rows (one compilation); the last one's padding is zeros.
            bands = [np.zeros((rows, m.shape[1]), np.float32) for m in mhs]
            for b, m in zip(bands, mhs, strict=True):
                b[: min(rows, th - r0)] = m[r0 : r0 + rows]
            labels = band_fn(logits, bands, mws)
            out[r0 : r0 + rows] = np.asarray(labels)[: th - r0]
        return out

    return fn


def make_eval_step(
    model: DeepLabV2,
    num_classes: int,
    views=SINGLE_VIEW,
    precision: str = DEFAULT_PRECISION,
    extra=None,
):
    """A jitted evaluation step: predictions at the label's size, and their confusion matrix.

    Args:
      model: a DeepLabV2 (static).
      num_classes: C of the confusion matrix.
      views: test-time augmentation.
      precision: matmul/convolution precision, one of PRECISIONS.
      extra: optional `fn(variables, images, label, mask, pred, confidence) -> {name: array}`
        of more per-batch sums (msjax.evaluation.loop adds them up over the split).

    Returns:
      jitted `step(variables, images, labels, mask) -> {'matrix': int32 [C, C], 'pred': int32
      [N, h, w], **extra}`; the logits are upsampled to `labels.shape[1:3]`, so the same step
      serves both protocols.
    """

    _check_precision(precision)

    def step(variables, images, label, mask):
        with jax.default_matmul_precision(precision):
            pred, conf = predict(model, variables, images, label.shape[1:3], views)
        matrix = metrics.confusion_matrix(pred, label, num_classes, mask=mask)
        out = {"matrix": matrix, "pred": pred}
        if extra is not None:
            out.update(extra(variables, images, label, mask, pred, conf))
        return out

    return jax.jit(step, compiler_options=xla.compiler_options(model.compile_platform))


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0.75,1.0,1.25' -> (0.75, 1.0, 1.25); ConfigError naming the bad entry."""
    if not isinstance(text, str):
        return tuple(float(s) for s in text)
    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"--scales: {part!r} is not a number (expected e.g. 0.75,1,1.25)"
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--scales: {part!r} must be a positive finite number")
        out.append(value)
    return tuple(out)
