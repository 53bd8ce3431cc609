"""Segmentation metrics: a confusion matrix accumulated on device, IoU tables on the host.

The protocol is docs/original.md, "Evaluation", and the one of the official Cityscapes evaluator:
- the confusion matrix counts every pixel whose ground truth is a class (0 <= gt < C); the
  ignore index (255) and padded batch entries (`mask` False) are left out, predictions of
  any class are counted;
- rows are ground truth, columns are predictions;
- IoU_c = TP / (TP + FP + FN), NaN for a class absent from both ground truth and prediction
  (0 / 0), so that it does not count in the mean;
- mIoU is the NaN-mean of the per-class IoUs.

The 13-class score of a 16-class (SYNTHIA) model is the original's `mIoU*`: the NaN-mean of
the 16-class IoUs of the 13 shared classes (`labels.SUBSET_13_IN_16`), each IoU computed from
the whole 16x16 matrix. This is what the original's `Eval.Mean_Intersection_over_Union`
returns as `MIoU_13`; re-deriving a 13x13 sub-matrix would drop pixels confused with wall,
fence or pole and give a (slightly) different, unpublished number.

`confusion_matrix` is pure jnp and runs inside jitted evaluation steps; the rest is NumPy
float64 on a [C, C] int64 matrix, which is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from msjax.data import labels

IGNORE = labels.IGNORE
# Largest pixel count a device-side int32 matrix may hold before it is flushed to the host.
_INT32_LIMIT = 2**31 - 1


def confusion_matrix(
    pred: jax.Array,
    label: jax.Array,
    num_classes: int,
    ignore_index: int = IGNORE,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Pixel confusion matrix of one batch, computed on device.

    Args:
      pred: integer predictions [N, H, W] (or any shape equal to `label`'s), values in
        [0, num_classes).
      label: integer ground truth of the same shape; `ignore_index` and any value outside
        [0, num_classes) are not counted.
      num_classes: C.
      ignore_index: the ignore label (255); listed for clarity, as any value outside the
        class range is excluded anyway.
      mask: optional bool [N]: False marks a padding entry of the batch, whose pixels are
        not counted whatever its label holds.

    Returns:
      int32 [C, C]; entry (i, j) counts pixels of ground truth i predicted as j.
    """
    pred = jnp.asarray(pred).astype(jnp.int32)
    label = jnp.asarray(label).astype(jnp.int32)
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} must have the same shape")
    valid = (label >= 0) & (label < num_classes) & (label != ignore_index)
    if mask is not None:
        mask = jnp.asarray(mask, bool).reshape(mask.shape + (1,) * (label.ndim - 1))
        valid = valid & mask
    # Invalid pixels are sent to bin 0 with weight 0: fixed shapes, no boolean indexing.
    index = jnp.where(valid, label * num_classes + jnp.clip(pred, 0, num_classes - 1), 0)
    counts = jnp.bincount(
        index.ravel(), weights=valid.ravel().astype(jnp.int32), length=num_classes**2
    )
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


class ConfusionAccumulator:
    """Sums per-batch confusion matrices on device; exact for any number of pixels.

    The running sum stays on the device (no host round trip per batch). It is int32, so it
    is moved into a host int64 matrix before it could overflow: whenever the pixels added
    since the last flush could exceed 2^31 - 1 (about 1,000 Cityscapes images at 2048x1024).

    Usage:
      acc = ConfusionAccumulator(19)
      for batch in stream: acc.add(step(batch), pixels=batch["label"].size)
      matrix = acc.result()   # int64 numpy [C, C]
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._host = np.zeros((num_classes, num_classes), np.int64)
        self._device = None
        self._pending = 0  # upper bound of the pixels in the device sum

    def add(self, matrix: jax.Array, pixels: int) -> None:
        """Adds one batch's matrix.

        Args:
          matrix: int32 [C, C] from `confusion_matrix` (may still be computing).
          pixels: an upper bound of the pixels it counts (the batch's label size).
        """
        if self._pending + pixels > _INT32_LIMIT:
            self._flush()
        self._device = matrix if self._device is None else self._device + matrix
        self._pending += pixels

    def _flush(self) -> None:
        if self._device is not None:
            self._host += np.asarray(jax.device_get(self._device), np.int64)
        self._device, self._pending = None, 0

    def result(self) -> np.ndarray:
        """The total matrix, int64 numpy [C, C] (waits for pending device work)."""
        self._flush()
        return self._host.copy()


def iou(matrix) -> np.ndarray:
    """Per-class intersection over union.

    Args:
      matrix: [C, C] confusion matrix (rows ground truth, columns prediction).

    Returns:
      float64 [C]: TP / (TP + FP + FN); NaN where a class is absent from both ground truth
      and prediction.
    """
    m = np.asarray(matrix, np.float64)
    tp = np.diag(m)
    denom = m.sum(axis=0) + m.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def nanmean(values) -> float:
    """Mean over the non-NaN entries; NaN (not a warning) if there is none."""
    values = np.asarray(values, np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def mean_iou(matrix) -> float:
    """mIoU: the NaN-mean of `iou(matrix)` (classes absent from gt and prediction skipped)."""
    return nanmean(iou(matrix))


def pixel_accuracy(matrix) -> float:
    """Fraction of counted pixels predicted correctly; NaN if none was counted."""
    m = np.asarray(matrix, np.float64)
    total = m.sum()
    return float(np.trace(m) / total) if total > 0 else float("nan")


def class_accuracy(matrix) -> np.ndarray:
    """Per-class recall TP / (TP + FN), NaN for classes without ground-truth pixels."""
    m = np.asarray(matrix, np.float64)
    rows = m.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rows > 0, np.diag(m) / np.where(rows > 0, rows, 1.0), np.nan)


def miou13_of_16(matrix) -> float:
    """The 13-class score (mIoU*) of a 16-class SYNTHIA confusion matrix.

    Args:
      matrix: [16, 16] confusion matrix in the 16-class subset's order.

    Returns:
      NaN-mean of the 16-class IoUs of the 13 shared classes, as the original computes it.
    """
    m = np.asarray(matrix)
    if m.shape != (16, 16):
        raise ValueError(f"miou13_of_16 needs a 16x16 matrix, got {m.shape}")
    return nanmean(iou(m)[list(labels.SUBSET_13_IN_16)])


def summarize(matrix) -> dict:
    """Every score of a confusion matrix, as plain Python values (JSON-ready).

    Args:
      matrix: [C, C] confusion matrix with C in (19, 16, 13).

    Returns:
      {'num_classes', 'classes': names, 'iou': per-class list (None for NaN), 'miou',
      'pixel_accuracy', 'mean_class_accuracy', 'pixels', and for C=16 'miou13'}; scores are
      fractions in [0, 1].
    """
    m = np.asarray(matrix, np.int64)
    c = m.shape[0]
    per_class = iou(m)
    out = {
        "num_classes": c,
        "classes": list(labels.class_names(c)),
        "iou": [None if np.isnan(v) else float(v) for v in per_class],
        "miou": mean_iou(m),
        "pixel_accuracy": pixel_accuracy(m),
        "mean_class_accuracy": nanmean(class_accuracy(m)),
        "pixels": int(m.sum()),
    }
    if c == 16:
        out["miou13"] = miou13_of_16(m)
    return out
