"""Input normalisation chosen by the weights' metadata, and its inverse for visualisation.

The weight converter records `input_normalization` in the checkpoint metadata:
- "caffe_bgr" (the original's DeepLab init; docs/original.md, "Input normalisation"): RGB ->
  BGR, float 0-255,
  subtract the BGR mean, no std division;
- "torchvision_rgb" (torchvision ImageNet weights): RGB / 255, subtract the ImageNet mean and
  divide by its std.

`normalize` uses only slicing and arithmetic, so it works unchanged on NumPy arrays, JAX
arrays and TensorFlow tensors (the tf.data pipeline calls it). Nothing here imports TF or JAX.
"""

import numpy as np

CAFFE_BGR_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
TORCHVISION_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
TORCHVISION_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)

NORMALIZATIONS = ("caffe_bgr", "torchvision_rgb")


def check_normalization(kind: str) -> str:
    """Validates a normalisation name.

    Args:
      kind: the `input_normalization` value from the weights' metadata.

    Returns:
      `kind`, unchanged.

    Raises:
      ValueError: `kind` is not one of NORMALIZATIONS.
    """
    if kind not in NORMALIZATIONS:
        raise ValueError(
            f"unknown input normalization {kind!r}; valid names are {list(NORMALIZATIONS)} "
            "(the `input_normalization` field written by msjax.convert)."
        )
    return kind


def normalize(image, kind: str):
    """Normalises RGB images with values in [0, 255] for a network.

    Args:
      image: float array or tensor [..., H, W, 3], RGB, values 0-255.
      kind: "caffe_bgr" or "torchvision_rgb".

    Returns:
      An array of the same type and shape, float32 values ready for the network.
    """
    check_normalization(kind)
    if kind == "caffe_bgr":
        return image[..., ::-1] - CAFFE_BGR_MEAN
    return (image / np.float32(255.0) - TORCHVISION_MEAN) / TORCHVISION_STD


def denormalize(image, kind: str) -> np.ndarray:
    """Inverts `normalize` for display.

    Args:
      image: array [..., H, W, 3] as produced by `normalize` (NumPy or anything np.asarray
        accepts, such as a JAX array already on the host).
      kind: the normalisation that produced it.

    Returns:
      uint8 NumPy array [..., H, W, 3], RGB.
    """
    check_normalization(kind)
    x = np.asarray(image, dtype=np.float32)
    if kind == "caffe_bgr":
        rgb = (x + CAFFE_BGR_MEAN)[..., ::-1]
    else:
        rgb = (x * TORCHVISION_STD + TORCHVISION_MEAN) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
