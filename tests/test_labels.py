"""Label tables against docs/original.md ("Data sets and label maps"), value by value."""

import numpy as np
import pytest

from msjax.data import labels

# docs/original.md ("Data sets and label maps"), verbatim: Cityscapes/GTA5/NTHU id -> train id.
REF_CITYSCAPES = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
REF_SYNTHIA = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17,
    15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
}  # fmt: skip
REF_16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
REF_13 = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
REF_NAMES = (
    "road sidewalk building wall fence pole light sign vegetation terrain sky person rider "
    "car truck bus train motorcycle bicycle"
).split()


@pytest.mark.parametrize("table, ref", [("cityscapes", REF_CITYSCAPES), ("synthia", REF_SYNTHIA)])
def test_id_to_train_id_every_value(table, ref):
    lut = labels.id_to_train_id_lut(table)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for raw in range(256):
        assert lut[raw] == ref.get(raw, 255), (table, raw)


@pytest.mark.parametrize("table", ["cityscapes", "synthia"])
def test_lut_applied_pixel_by_pixel(table):
    ref = REF_CITYSCAPES if table == "cityscapes" else REF_SYNTHIA
    ids = np.random.default_rng(0).integers(0, 256, (40, 50)).astype(np.uint8)
    mapped = labels.id_to_train_id_lut(table)[ids]
    for (y, x), raw in np.ndenumerate(ids):
        assert mapped[y, x] == ref.get(int(raw), 255)


def test_subsets_match_reference():
    assert list(labels.SUBSET_16) == REF_16
    assert list(labels.SUBSET_13) == REF_13
    assert list(labels.SUBSET_13_IN_16) == [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    for n, kept in ((19, list(range(19))), (16, REF_16), (13, REF_13)):
        lut = labels.subset_lut(n)
        for train_id in range(256):
            want = kept.index(train_id) if train_id in kept else 255
            assert lut[train_id] == want, (n, train_id)


def test_synthia_to_16_classes_composes():
    # SYNTHIA terrain (16) -> train id 9 -> dropped by the 16-class subset.
    lut = labels.subset_lut(16)[labels.id_to_train_id_lut("synthia")]
    assert lut[16] == 255 and lut[3] == 0 and lut[8] == REF_16.index(13)
    assert set(np.unique(lut)) == set(range(16)) | {255}


def test_class_names_and_palette():
    assert len(labels.CLASS_NAMES_19) == 19
    for name, ref in zip(labels.CLASS_NAMES_19, REF_NAMES, strict=True):
        assert ref in name  # official names say "traffic light", "traffic sign"
    assert labels.class_names(13) == tuple(labels.CLASS_NAMES_19[t] for t in REF_13)
    assert labels.class_names(16)[9] == "sky"
    assert labels.palette(19).shape == (19, 3)
    assert tuple(labels.palette(19)[0]) == (128, 64, 128)  # road
    assert tuple(labels.palette(13)[-1]) == (119, 11, 32)  # bicycle
    lab = np.array([[0, 13], [255, 18]])
    rgb = labels.colorize(lab)
    assert tuple(rgb[0, 1]) == (0, 0, 142) and tuple(rgb[1, 0]) == (0, 0, 0)


def test_official_table_is_consistent():
    ids = [lab.id for lab in labels.CITYSCAPES_LABELS]
    assert ids == list(range(34))
    train = sorted(lab.train_id for lab in labels.CITYSCAPES_LABELS if lab.train_id != 255)
    assert train == list(range(19))


def test_bad_names():
    with pytest.raises(ValueError, match=r"\[13, 16, 19\]"):
        labels.subset_lut(7)
    with pytest.raises(ValueError, match="cityscapes"):
        labels.id_to_train_id_lut("kitti")
