"""Segmentation losses of the maximum squares paper, in pure jax.numpy.

Everything here follows the original's losses (docs/original.md, "Losses"). Conventions:

* Logits are NHWC ``[N, H, W, C]``; labels are integer ``[N, H, W]``.
* Every loss is computed in float32 whatever the logits' dtype (bfloat16 logits from a mixed
  precision model are upcast first), and returns a float32 scalar; float64 logits (exact
  tests under ``jax.enable_x64``) stay float64 throughout.
* Every loss is ``jax.jit``-compiled with its hyper-parameters static, never pulls a value
  to the host, and is safe to call inside a larger jitted train step (the nested jit is
  inlined by XLA).
* Probabilities come from ``jax.nn.softmax`` / ``jax.nn.log_softmax``, which subtract the
  per-pixel maximum first, so logits of magnitude 100 give finite values and gradients.

The target-domain losses (``max_square``, ``iw_max_square``, ``entropy``,
``hard_pseudo_label``) are the methods' (``msjax.methods``).
"""

import functools

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255
# A pixel is "easy" when its predicted class has probability above this (the paper's argument
# in section 3: entropy minimisation lets such pixels take most of the gradient).
EASY_PROBABILITY = 0.9


def _upcast(x):
    """float32 for float32/bfloat16/float16 input; float64 stays float64."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _masked_mean_ce(logits, labels, valid):
    """Mean cross-entropy over the pixels where ``valid`` is true; 0 when there are none.

    Args:
      logits: float32 (or float64) ``[N, H, W, C]``.
      labels: int ``[N, H, W]``; values where ``valid`` is false are never read as classes.
      valid: bool ``[N, H, W]``.

    Returns:
      A float32 scalar.
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # Each pixel's log-probability of its label, as a masked sum over the classes rather
    # than a gather: the one non-zero term makes it exact, and a gather of one element per
    # pixel is what XLA:TPU moves most bytes for (docs/performance.md). Ignored pixels
    # (any sentinel, 255 or -1) match no class; the mask below also drops them.
    label_of = labels[..., None] == jnp.arange(logits.shape[-1], dtype=labels.dtype)
    nll = -jnp.sum(jnp.where(label_of, log_p, 0.0), axis=-1)
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    # max(count, 1): with no valid pixel the sum is exactly 0, so the loss is 0 (PyTorch's
    # mean reduction would give 0/0 = NaN) and its gradient is 0 too.
    count = jnp.maximum(jnp.sum(valid, dtype=logits.dtype), 1.0)
    return total / count


@functools.partial(jax.jit, static_argnames=("ignore_index",))
def cross_entropy(logits, labels, ignore_index=IGNORE_INDEX):
    """Softmax cross-entropy averaged over the non-ignored pixels.

    Args:
      logits: ``[N, H, W, C]`` logits, any float dtype.
      labels: integer ``[N, H, W]`` class ids in ``[0, C)``, or ``ignore_index``. Any other
        out-of-range value is ignored as well (PyTorch would raise; inside jit we cannot).
      ignore_index: label value that marks pixels without ground truth.

    Returns:
      float32 scalar: the mean over non-ignored pixels, 0 (not NaN) when all are ignored.
    """
    num_classes = logits.shape[-1]
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    return _masked_mean_ce(_upcast(logits), labels, valid)


@jax.jit
def max_square(logits):
    """Maximum squares loss: ``-sum(p^2) / (2 N C H W)``, with ``p = softmax(logits)``.

    Its gradient with respect to a class probability is linear in that probability, so
    confident (easy) pixels do not dominate training the way they do under entropy
    minimisation. The probabilities are not detached.

    Args:
      logits: ``[N, H, W, C]`` logits of the main head, any float dtype.

    Returns:
      float32 scalar (negative; -1/(2C) at a one-hot prediction).
    """
    p = jax.nn.softmax(_upcast(logits), axis=-1)
    return -jnp.mean(jnp.square(p)) / 2.0


@functools.partial(jax.jit, static_argnames=("ratio",))
def iw_pixel_weights(logits, ratio=0.2):
    """Image-wise class-balancing weights of the IW maximum squares loss.

    Per image: ``n_c`` = number of pixels whose argmax is class ``c``; class weight
    ``w_c = 1 / max(n_c^ratio * (H W)^(1 - ratio), 1)``; each pixel gets the weight of its
    own argmax class. Frequent classes get smaller weights. No gradient flows through them.

    Args:
      logits: ``[N, H, W, C]`` logits, any float dtype.
      ratio: the exponent ``a`` (0.2 in the paper); 0 gives uniform weights ``1/(HW)``.

    Returns:
      float32 ``[N, H, W]`` pixel weights.
    """
    logits = jax.lax.stop_gradient(_upcast(logits))
    _, height, width, num_classes = logits.shape
    # The original takes the argmax of the probabilities; do the same so that the rare
    # pixels where softmax rounding creates a tie resolve identically.
    pred = jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1)
    one_hot = jax.nn.one_hot(pred, num_classes, dtype=logits.dtype)
    # Per-image histogram as a vectorised count (exact in float32 below 2^24 pixels): this
    # is what fixes the original, which shares one argmax map across the batch.
    counts = one_hot.sum(axis=(1, 2))  # [N, C]
    num_pixels = jnp.asarray(height * width, logits.dtype)
    denom = jnp.power(counts, ratio) * jnp.power(num_pixels, 1.0 - ratio)
    class_weights = 1.0 / jnp.maximum(denom, 1.0)  # [N, C]
    # Gather by a masked sum over classes: exactly one term is non-zero, so this is exact on
    # every backend (a matmul could be rounded to TF32 on GPU).
    return jnp.sum(one_hot * class_weights[:, None, None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("ratio",))
def iw_max_square(logits, ratio=0.2):
    """Image-wise weighted maximum squares: ``-sum_{n,c,h,w} p^2 W[n,h,w] / (N C)``.

    ``W`` comes from :func:`iw_pixel_weights` and is computed per image, so unlike the
    original this is correct for any batch size; at batch 1 the two agree exactly. There
    is no factor 1/2 here (faithful to the original).

    Args:
      logits: ``[N, H, W, C]`` logits of the main head, any float dtype.
      ratio: the class-balancing exponent ``a`` (0.2 in the paper).

    Returns:
      float32 scalar.
    """
    num, _, _, num_classes = logits.shape
    p = jax.nn.softmax(_upcast(logits), axis=-1)
    weights = iw_pixel_weights(logits, ratio=ratio)
    weighted = jnp.sum(jnp.square(p), axis=-1) * weights
    return -jnp.sum(weighted) / (num * num_classes)


@jax.jit
def entropy(logits):
    """MinEnt baseline: mean over ``N C H W`` of ``-log_softmax(logits) * p``.

    Written as ``p * log_softmax`` rather than ``p * log(p)``: when ``p`` underflows to 0 the
    log-softmax stays finite, so the product is 0 instead of ``0 * -inf = NaN``.

    Args:
      logits: ``[N, H, W, C]`` logits, any float dtype.

    Returns:
      float32 scalar: the mean per-pixel entropy divided by ``C``. ``p`` is not detached.
    """
    log_p = jax.nn.log_softmax(_upcast(logits), axis=-1)
    return -jnp.mean(jnp.exp(log_p) * log_p)


@functools.partial(jax.jit, static_argnames=("threshold",))
def hard_pseudo_label(logits, threshold=0.95):
    """Hard pseudo-label baseline: cross-entropy against the model's own argmax.

    Args:
      logits: ``[N, H, W, C]`` logits, any float dtype.
      threshold: pixels whose maximum probability is ``<= threshold`` are ignored.

    Returns:
      float32 scalar: mean CE over the kept pixels, 0 when none is kept. The pseudo-labels
      and the mask carry no gradient.
    """
    logits = _upcast(logits)
    p = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
    labels = jnp.argmax(p, axis=-1)
    keep = jnp.max(p, axis=-1) > threshold
    return _masked_mean_ce(logits, labels, keep)


@functools.partial(jax.jit, static_argnames=("threshold",))
def multi_level_labels(main_logits, aux_logits, threshold=0.95):
    """The pseudo-labels of multi-level guidance and the pixels they keep (no gradient).

    Labels are ``argmax((softmax(main) + softmax(aux)) / 2)``, kept where the maximum of
    either softmax exceeds ``threshold``.

    Args:
      main_logits, aux_logits: ``[N, H, W, C]`` logits of the two heads.
      threshold: confidence threshold on either head's maximum probability.

    Returns:
      (int32 labels ``[N, H, W]``, bool keep ``[N, H, W]``).
    """
    q_main = jax.nn.softmax(jax.lax.stop_gradient(_upcast(main_logits)), axis=-1)
    q_aux = jax.nn.softmax(jax.lax.stop_gradient(_upcast(aux_logits)), axis=-1)
    labels = jnp.argmax((q_main + q_aux) / 2.0, axis=-1).astype(jnp.int32)
    keep = (jnp.max(q_main, axis=-1) > threshold) | (jnp.max(q_aux, axis=-1) > threshold)
    return labels, keep


@functools.partial(jax.jit, static_argnames=("threshold",))
def multi_level_guidance(main_logits, aux_logits, threshold=0.95):
    """Multi-level self-produced guidance: CE on the aux head against fused pseudo-labels.

    The pseudo-labels and the kept pixels come from :func:`multi_level_labels` (0.95; 0.98
    for cross-city). Only the CE term is returned: the caller multiplies it by
    ``lambda_seg * lambda_target``.

    Args:
      main_logits: ``[N, H, W, C]`` logits of the main head (used for labels only: it gets
        no gradient from this term).
      aux_logits: ``[N, H, W, C]`` logits of the auxiliary head, which the CE trains.
      threshold: confidence threshold on either head's maximum probability.

    Returns:
      float32 scalar: mean CE over the kept pixels; 0 with a zero gradient when none is kept.
    """
    labels, keep = multi_level_labels(main_logits, aux_logits, threshold=threshold)
    return _masked_mean_ce(_upcast(aux_logits), labels, keep)


def easy_pixels(logits, threshold=EASY_PROBABILITY):
    """``[N, H, W]`` bool: the pixels whose predicted class has probability above ``threshold``."""
    return jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1) > threshold


def logit_gradient_magnitude(loss_fn, logits):
    """``[N, H, W]``: the L2 norm over classes of ``d loss_fn / d logits``, logits as constants."""
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    grad = jax.grad(loss_fn)(logits)
    return jnp.sqrt(jnp.sum(jnp.square(grad), axis=-1))


@functools.partial(jax.jit, static_argnames=("loss_fn", "threshold"))
def easy_gradient_share(loss_fn, logits, threshold=EASY_PROBABILITY, easy=None):
    """The share of a target loss's gradient w.r.t. the logits that easy pixels receive.

    Each pixel's gradient magnitude is the L2 norm over classes of ``d loss / d logits``;
    the share is the sum over pixels whose maximum probability exceeds ``threshold``,
    divided by the sum over all pixels. A constant factor of the loss (lambda, the mean's
    divisor) cancels, so shares of different losses compare directly.

    Args:
      loss_fn: a loss of NHWC logits, e.g. :func:`entropy` or :func:`max_square` (static).
      logits: ``[N, H, W, C]`` logits; treated as constants (no gradient flows back).
      threshold: the probability above which a pixel counts as easy.
      easy: ``easy_pixels(logits, threshold)`` if already computed (for several losses).

    Returns:
      (share of the gradient that easy pixels receive, share of the pixels that are easy,
      mean gradient magnitude per pixel): float32 scalars; the gradient share is 0 when the
      whole gradient is 0. The magnitude depends on the loss's scale (it is the gradient of
      the loss as given, e.g. a mean over N C H W).
    """
    magnitude = logit_gradient_magnitude(loss_fn, logits)
    if easy is None:
        easy = easy_pixels(logits.astype(jnp.float32), threshold)
    total = jnp.sum(magnitude)
    share = jnp.where(total > 0, jnp.sum(jnp.where(easy, magnitude, 0.0)) / total, 0.0)
    return share, jnp.mean(easy, dtype=jnp.float32), jnp.mean(magnitude)
