"""Label tables: raw ids -> train ids, the 19/16/13-class subsets, class names and palette.

The Cityscapes table below is transcribed from the official `cityscapesscripts` label table
(`cityscapesscripts/helpers/labels.py`, v2.3.0). That package is not a dependency: its
install pulls `requests`, `coloredlogs`, `pyquaternion` and the obsolete `typing` backport
for one table, so the table lives here and `tests/test_labels.py` checks it against
docs/original.md ("Data sets and label maps"). GTA5 and NTHU labels use Cityscapes ids;
SYNTHIA has its own ids.

Prepared data sets store 19-class train ids (uint8, 255 = ignore) for every source; the
pipeline maps them to the 16- or 13-class subsets with `subset_lut`.
"""

from typing import NamedTuple

import numpy as np

IGNORE = 255  # Ignore label in every stored and streamed label map.


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# name, id, trainId, color: the official table (license plate, id -1, is left out: it never
# appears in label PNGs, which store ids 0..33).
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = tuple(
    CityscapesLabel(*row)
    for row in [
        ("unlabeled", 0, 255, (0, 0, 0)),
        ("ego vehicle", 1, 255, (0, 0, 0)),
        ("rectification border", 2, 255, (0, 0, 0)),
        ("out of roi", 3, 255, (0, 0, 0)),
        ("static", 4, 255, (0, 0, 0)),
        ("dynamic", 5, 255, (111, 74, 0)),
        ("ground", 6, 255, (81, 0, 81)),
        ("road", 7, 0, (128, 64, 128)),
        ("sidewalk", 8, 1, (244, 35, 232)),
        ("parking", 9, 255, (250, 170, 160)),
        ("rail track", 10, 255, (230, 150, 140)),
        ("building", 11, 2, (70, 70, 70)),
        ("wall", 12, 3, (102, 102, 156)),
        ("fence", 13, 4, (190, 153, 153)),
        ("guard rail", 14, 255, (180, 165, 180)),
        ("bridge", 15, 255, (150, 100, 100)),
        ("tunnel", 16, 255, (150, 120, 90)),
        ("pole", 17, 5, (153, 153, 153)),
        ("polegroup", 18, 255, (153, 153, 153)),
        ("traffic light", 19, 6, (250, 170, 30)),
        ("traffic sign", 20, 7, (220, 220, 0)),
        ("vegetation", 21, 8, (107, 142, 35)),
        ("terrain", 22, 9, (152, 251, 152)),
        ("sky", 23, 10, (70, 130, 180)),
        ("person", 24, 11, (220, 20, 60)),
        ("rider", 25, 12, (255, 0, 0)),
        ("car", 26, 13, (0, 0, 142)),
        ("truck", 27, 14, (0, 0, 70)),
        ("bus", 28, 15, (0, 60, 100)),
        ("caravan", 29, 255, (0, 0, 90)),
        ("trailer", 30, 255, (0, 0, 110)),
        ("train", 31, 16, (0, 80, 100)),
        ("motorcycle", 32, 17, (0, 0, 230)),
        ("bicycle", 33, 18, (119, 11, 32)),
    ]
)

# The 19 training classes, in train-id order.
CLASS_NAMES_19: tuple[str, ...] = tuple(
    lab.name for lab in sorted(CITYSCAPES_LABELS, key=lambda r: r.train_id) if lab.train_id != 255
)
# Colours of the 19 classes, in train-id order (the usual Cityscapes visualisation palette).
PALETTE_19: np.ndarray = np.array(
    [lab.color for lab in sorted(CITYSCAPES_LABELS, key=lambda r: r.train_id) if lab.train_id < 19],
    dtype=np.uint8,
)

# Cityscapes (and GTA5, NTHU) id -> 19-class train id. Ids not listed map to IGNORE.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    lab.id: lab.train_id for lab in CITYSCAPES_LABELS if lab.train_id != 255
}
# Largest id the Cityscapes table defines; larger raw values are "outside the map".
CITYSCAPES_MAX_ID = 33

# SYNTHIA-RAND-CITYSCAPES id (first channel of GT/LABELS) -> 19-class train id
# (docs/original.md, "Data sets and label maps"). SYNTHIA ids 0..22 are defined; 0 (void),
# 13 (lanemarking), 14 and 22 ignore.
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11,
    11: 18, 12: 17, 15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
}  # fmt: skip
SYNTHIA_MAX_ID = 22

# Train ids kept by the class subsets, in the order of their new ids 0..C-1.
SUBSET_16: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SUBSET_13: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
# Rows/columns of a 16-class confusion matrix that give the 13-class (mIoU*) score.
SUBSET_13_IN_16: tuple[int, ...] = tuple(SUBSET_16.index(t) for t in SUBSET_13)

_SUBSETS = {19: tuple(range(19)), 16: SUBSET_16, 13: SUBSET_13}
VALID_NUM_CLASSES = tuple(sorted(_SUBSETS))


def _check_num_classes(num_classes: int) -> tuple[int, ...]:
    if num_classes not in _SUBSETS:
        raise ValueError(
            f"num_classes={num_classes!r} is not a supported class set; valid values are "
            f"{list(VALID_NUM_CLASSES)} (19 GTA5/Cityscapes, 16 SYNTHIA, 13 cross-city/mIoU*)."
        )
    return _SUBSETS[num_classes]


def id_to_train_id_lut(table: str) -> np.ndarray:
    """Lookup table from a raw label id to a 19-class train id.

    Args:
      table: "cityscapes" (also GTA5 and NTHU labels) or "synthia".

    Returns:
      uint8 array of 256 entries; `lut[raw]` is the train id or IGNORE (255).
    """
    mapping = {"cityscapes": CITYSCAPES_ID_TO_TRAIN_ID, "synthia": SYNTHIA_ID_TO_TRAIN_ID}
    if table not in mapping:
        raise ValueError(f"unknown label table {table!r}; valid: {sorted(mapping)}")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw, train in mapping[table].items():
        lut[raw] = train
    return lut


def max_defined_id(table: str) -> int:
    """Largest raw id the table defines; larger values are counted as outside the map.

    Args:
      table: "cityscapes" or "synthia".

    Returns:
      The largest raw id with a row in the official table.
    """
    return {"cityscapes": CITYSCAPES_MAX_ID, "synthia": SYNTHIA_MAX_ID}[table]


def subset_lut(num_classes: int) -> np.ndarray:
    """Lookup table from a 19-class train id to the id within a class subset.

    Args:
      num_classes: 19, 16 or 13.

    Returns:
      uint8 array of 256 entries: `lut[train_id]` is the subset id, IGNORE for train ids the
      subset drops and for IGNORE itself.
    """
    kept = _check_num_classes(num_classes)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for new, train in enumerate(kept):
        lut[train] = new
    return lut


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the classes of a subset, in the subset's id order.

    Args:
      num_classes: 19, 16 or 13.

    Returns:
      A tuple of `num_classes` names.
    """
    return tuple(CLASS_NAMES_19[t] for t in _check_num_classes(num_classes))


def palette(num_classes: int = 19) -> np.ndarray:
    """Cityscapes colours of the classes of a subset.

    Args:
      num_classes: 19, 16 or 13.

    Returns:
      uint8 array [num_classes, 3] (RGB).
    """
    return PALETTE_19[list(_check_num_classes(num_classes))]


def colorize(label: np.ndarray, num_classes: int = 19) -> np.ndarray:
    """Colours a label map with the Cityscapes palette; IGNORE and unknown ids become black.

    Args:
      label: integer array [..., H, W] of subset ids.
      num_classes: the subset the ids belong to.

    Returns:
      uint8 array [..., H, W, 3] (RGB).
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)
    return table[np.clip(np.asarray(label), 0, 255).astype(np.int64)]
