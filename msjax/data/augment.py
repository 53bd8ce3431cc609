"""Joint image/label augmentation as pure TensorFlow functions of (image, label, seed).

Every random draw is a stateless op keyed by an explicit seed, so the same example with the
same seed gives the same output eagerly and inside tf.data, on any number of workers, and a
resumed run re-draws exactly what it drew before. As the original ran it (docs/original.md,
"Optimisation"): horizontal flip p=0.5 and a Gaussian blur of radius U[0, 1) with p=0.5.
Random scale and crop exist behind config fields (off in the original's runs).

Images are float32 RGB in 0..255 [H, W, 3]; labels uint8 or int32 [H, W], 255 = ignore.
"""

from msjax.data import hide_gpus_from_tensorflow

tf = hide_gpus_from_tensorflow()

IGNORE = 255
_BLUR_TAPS = 3  # kernel half-width: 3 sigma of the largest radius (just under 1)


def _uniform(seed, salt: int, shape=()):
    """U[0, 1) keyed by (seed, salt); salts keep the draws of different ops independent."""
    return tf.random.stateless_uniform(shape, seed=tf.stack([seed[0], seed[1] + salt]))


def flip(image, label, seed, p: float = 0.5):
    """Mirrors image and label left-right with probability p.

    Args:
      image: float32 [H, W, 3].
      label: [H, W].
      seed: int64 [2] stateless seed.
      p: flip probability.

    Returns:
      (image, label).
    """
    do = _uniform(seed, 1) < p
    image = tf.cond(do, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(do, lambda: tf.reverse(label, [1]), lambda: label)
    return image, label


def gaussian_blur(image, sigma):
    """Separable Gaussian blur with edge padding; sigma 0 returns the image unchanged.

    PIL's `GaussianBlur(radius)` (what the original calls) uses radius as the standard
    deviation; here the kernel is an exact sampled Gaussian over 7 taps, enough for sigma < 1.

    Args:
      image: float32 [H, W, C].
      sigma: scalar standard deviation in pixels.

    Returns:
      The blurred image, same shape.
    """
    taps = tf.range(-_BLUR_TAPS, _BLUR_TAPS + 1, dtype=tf.float32)
    safe = tf.maximum(sigma, 1e-3)
    kernel = tf.exp(-0.5 * tf.square(taps / safe))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    x = image[None]
    pad = [[0, 0], [_BLUR_TAPS, _BLUR_TAPS], [_BLUR_TAPS, _BLUR_TAPS], [0, 0]]
    x = tf.pad(x, pad, mode="SYMMETRIC")
    kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, kx, strides=[1, 1, 1, 1], padding="VALID")
    x = tf.nn.depthwise_conv2d(x, ky, strides=[1, 1, 1, 1], padding="VALID")
    return tf.where(sigma > 1e-3, x[0], image)


def random_blur(image, seed, p: float = 0.5, max_radius: float = 1.0):
    """Blurs with probability p, radius drawn from U[0, max_radius).

    Args:
      image: float32 [H, W, 3].
      seed: int64 [2].
      p: blur probability.
      max_radius: upper bound of the radius (Gaussian sigma).

    Returns:
      The image.
    """
    do = _uniform(seed, 2) < p
    sigma = _uniform(seed, 3) * max_radius
    return tf.cond(do, lambda: gaussian_blur(image, sigma), lambda: image)


def random_scale(image, label, seed, min_scale: float, max_scale: float):
    """Resizes by a factor U[min_scale, max_scale): image bicubic, label nearest.

    Args:
      image: float32 [H, W, 3].
      label: [H, W].
      seed: int64 [2].
      min_scale: lower bound of the factor.
      max_scale: upper bound of the factor.

    Returns:
      (image, label) at the new size.
    """
    s = min_scale + _uniform(seed, 4) * (max_scale - min_scale)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.cast(tf.round(hw * s), tf.int32)
    image = tf.clip_by_value(tf.image.resize(image, size, method="bicubic"), 0.0, 255.0)
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    return image, label


def random_crop(image, label, seed, crop_hw):
    """Crops a random window of crop_hw, padding with 0 / ignore when the image is smaller.

    Args:
      image: float32 [H, W, 3].
      label: [H, W].
      seed: int64 [2].
      crop_hw: (height, width) of the window.

    Returns:
      (image [ch, cw, 3], label [ch, cw]).
    """
    ch, cw = crop_hw
    shape = tf.shape(image)
    ph, pw = tf.maximum(ch - shape[0], 0), tf.maximum(cw - shape[1], 0)
    image = tf.pad(image, [[0, ph], [0, pw], [0, 0]])
    label = tf.pad(label, [[0, ph], [0, pw]], constant_values=IGNORE)
    shape = tf.shape(image)
    y0 = tf.cast(tf.floor(_uniform(seed, 5) * tf.cast(shape[0] - ch + 1, tf.float32)), tf.int32)
    x0 = tf.cast(tf.floor(_uniform(seed, 6) * tf.cast(shape[1] - cw + 1, tf.float32)), tf.int32)
    image = image[y0 : y0 + ch, x0 : x0 + cw]
    label = label[y0 : y0 + ch, x0 : x0 + cw]
    return tf.ensure_shape(image, [ch, cw, 3]), tf.ensure_shape(label, [ch, cw])


def augment(
    image,
    label,
    seed,
    *,
    flip_prob: float = 0.5,
    blur_prob: float = 0.5,
    scale_range=None,
    crop_hw=None,
):
    """The training augmentation: [scale] -> [crop] -> flip -> blur.

    Args:
      image: float32 [H, W, 3], RGB 0..255.
      label: [H, W].
      seed: int64 [2] stateless seed of this example.
      flip_prob: probability of a horizontal flip (0 disables).
      blur_prob: probability of a Gaussian blur with radius U[0, 1) (0 disables).
      scale_range: (min, max) random scale factor, or None.
      crop_hw: (height, width) random crop, or None.

    Returns:
      (image, label).
    """
    seed = tf.cast(seed, tf.int64)
    image = tf.convert_to_tensor(image, tf.float32)
    label = tf.convert_to_tensor(label)
    if scale_range is not None:
        image, label = random_scale(image, label, seed, *scale_range)
    if crop_hw is not None:
        image, label = random_crop(image, label, seed, crop_hw)
    if flip_prob > 0:
        image, label = flip(image, label, seed, flip_prob)
    if blur_prob > 0:
        image = random_blur(image, seed, blur_prob)
    return image, label
