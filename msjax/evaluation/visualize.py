"""Pictures of predictions: Cityscapes colours, overlays, submission label ids, IoU charts.

`colorize(labels, num_classes)` is the one function the trainer's TensorBoard images and
`python -m msjax.predict` share. Everything works on NumPy arrays (JAX arrays are pulled to
the host with `np.asarray`) and any leading batch dimensions. Colours are the official
Cityscapes palette of the class subset (19, 16 or 13 classes, `msjax.data.labels`), so a
16-class car is the same blue as a 19-class car; ignore (255) and out-of-range ids are black.
"""

from __future__ import annotations

import numpy as np

from msjax.data import labels

_TRAIN_ID_TO_ID = {t: i for i, t in labels.CITYSCAPES_ID_TO_TRAIN_ID.items()}
UNLABELED_ID = 0  # Cityscapes id written where a prediction has no class (never by argmax)


def _lookup(table: np.ndarray, ids) -> np.ndarray:
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"label maps must be integer arrays, got {ids.dtype}")
    return table[np.clip(ids, 0, len(table) - 1).astype(np.intp)]


def colorize(label_map, num_classes: int = 19) -> np.ndarray:
    """Colours a label map with the Cityscapes palette.

    Args:
      label_map: integer array [..., H, W] of class ids of the subset (NumPy or JAX).
      num_classes: 19, 16 or 13: the subset the ids belong to.

    Returns:
      uint8 [..., H, W, 3] RGB; ids outside [0, num_classes) (ignore = 255) are black.
    """
    ids = np.asarray(label_map)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"label maps must be integer arrays, got {ids.dtype}")
    return labels.colorize(ids, num_classes)  # the palette lookup lives with the label tables


def overlay(image, color, alpha: float = 0.5, label_map=None) -> np.ndarray:
    """Blends a colour label map over an image.

    Args:
      image: uint8 [..., H, W, 3] RGB image.
      color: uint8 [..., H, W, 3] from `colorize`.
      alpha: weight of the colours (0 = image only, 1 = colours only).
      label_map: optional integer [..., H, W]; where it is ignore (255) the image shows
        unblended instead of darkened.

    Returns:
      uint8 [..., H, W, 3].
    """
    image, color = np.asarray(image), np.asarray(color)
    if image.shape != color.shape:
        raise ValueError(f"image {image.shape} and colours {color.shape} differ in shape")
    ignore = None if label_map is None else np.asarray(label_map) == labels.IGNORE
    out = np.empty(image.shape, np.uint8)
    flat_image, flat_color = image.reshape(-1, 3), color.reshape(-1, 3)
    flat_out, flat_ignore = out.reshape(-1, 3), None if ignore is None else ignore.reshape(-1)
    chunk = 1 << 20  # pixels blended at a time: float32 copies of a whole large image are GBs
    for i in range(0, flat_out.shape[0], chunk):
        img = flat_image[i : i + chunk].astype(np.float32)
        blend = (1.0 - alpha) * img + alpha * flat_color[i : i + chunk].astype(np.float32)
        if flat_ignore is not None:
            blend = np.where(flat_ignore[i : i + chunk, None], img, blend)
        flat_out[i : i + chunk] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out


def to_cityscapes_ids(label_map, num_classes: int = 19) -> np.ndarray:
    """Subset class ids -> official Cityscapes label ids (the benchmark's submission format).

    Args:
      label_map: integer [..., H, W] of class ids of the subset.
      num_classes: 19, 16 or 13.

    Returns:
      uint8 [..., H, W] of Cityscapes ids (7 road, 8 sidewalk, ..., 33 bicycle); anything
      outside the subset becomes 0 ('unlabeled').
    """
    table = np.full(256, UNLABELED_ID, np.uint8)
    for new, name in enumerate(labels.class_names(num_classes)):
        table[new] = _TRAIN_ID_TO_ID[labels.CLASS_NAMES_19.index(name)]
    return _lookup(table, label_map)


def panel(image, label_map, prediction, num_classes: int = 19) -> np.ndarray:
    """Image | ground truth | prediction, side by side (the trainer's TensorBoard picture).

    Args:
      image: uint8 [..., H, W, 3] RGB (e.g. `msjax.data.normalize.denormalize` output).
      label_map: integer [..., H, W] ground truth (255 = ignore, shown black).
      prediction: integer [..., H, W].
      num_classes: the class subset.

    Returns:
      uint8 [..., H, 3 * W, 3].
    """
    parts = [np.asarray(image, np.uint8), colorize(label_map, num_classes)]
    parts.append(colorize(prediction, num_classes))
    return np.concatenate(parts, axis=-2)


def iou_bar_chart(path, names, ious, published=None, title="", published_label="published"):
    """Bar chart of per-class IoU, optionally beside a published row; saved as PNG.

    Args:
      path: output .png path.
      names: class names.
      ious: per-class IoU in percent (None or NaN for classes without pixels).
      published: optional per-class percentages of a published result (same order).
      title: chart title (the protocol and mIoU belong here).
      published_label: legend entry of the published bars.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    values = np.array([np.nan if v is None else v for v in ious], np.float64)
    x = np.arange(len(names))
    width = 0.4 if published is not None else 0.7
    colours = labels.palette(len(names)) / 255.0 if len(names) in (19, 16, 13) else None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 1.5), 4.2))
    shift = -width / 2 if published is not None else 0.0
    ax.bar(x + shift, np.nan_to_num(values), width, color=colours, edgecolor="black", label="msjax")
    for xi, v in zip(x, values, strict=True):
        ax.text(xi + shift, (0 if np.isnan(v) else v) + 1, "n/a" if np.isnan(v) else f"{v:.1f}",
                ha="center", va="bottom", fontsize=6, rotation=90)  # fmt: skip
    if published is not None:
        pub = np.array([np.nan if v is None else v for v in published], np.float64)
        ax.bar(x + width / 2, np.nan_to_num(pub), width, color="lightgrey", edgecolor="grey",
               hatch="//", label=published_label)  # fmt: skip
        ax.legend(fontsize=8)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
