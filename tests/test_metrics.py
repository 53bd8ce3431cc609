"""Metrics: the on-device confusion matrix and the host IoU table against NumPy references."""

import jax
import numpy as np
import pytest

from msjax.data import labels
from msjax.evaluation import metrics, published
from tests.helpers import numpy_confusion, numpy_iou

_cm = jax.jit(metrics.confusion_matrix, static_argnums=(2,))


def _random_batch(seed, num_classes, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    # Two classes never occur in the labels; the first is predicted (IoU 0), the second
    # never is (IoU NaN).
    order = rng.permutation(num_classes)
    present, absent = order[:-2], order[-2:]
    label = rng.choice(present, size=shape).astype(np.int32)
    pred = rng.choice(np.append(present, absent[0]), size=shape)
    pred = np.where(rng.random(shape) < 0.4, label, pred).astype(np.int32)
    label[rng.random(shape) < 0.15] = labels.IGNORE
    label[rng.random(shape) < 0.02] = num_classes + 3  # out of range: not counted either
    mask = np.array([True, False, True])  # the middle entry is batch padding
    return pred, label, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_confusion_matrix_matches_numpy(seed, num_classes):
    pred, label, mask = _random_batch(seed, num_classes)
    got = np.asarray(_cm(pred, label, num_classes, mask=mask))
    want = numpy_confusion(pred, label, num_classes, mask)
    np.testing.assert_array_equal(got, want)
    assert got.sum() < numpy_confusion(pred, label, num_classes).sum()  # padding was dropped
    # Rows are ground truth: the padding entry's pixels are absent from every row.
    np.testing.assert_array_equal(got.sum(1), np.bincount(
        label[mask][(label[mask] < num_classes)], minlength=num_classes))  # fmt: skip
    iou = metrics.iou(got)
    np.testing.assert_allclose(iou, numpy_iou(want), rtol=1e-12, equal_nan=True)
    absent = (want.sum(0) == 0) & (want.sum(1) == 0)
    assert absent.any() and np.isnan(iou[absent]).all() and not np.isnan(iou[~absent]).any()
    assert metrics.mean_iou(got) == pytest.approx(np.nanmean(numpy_iou(want)), abs=1e-12)
    assert metrics.pixel_accuracy(got) == pytest.approx(np.trace(want) / want.sum(), abs=1e-12)


def test_iou_by_hand():
    # gt 0: 3 pixels (2 right, 1 as class 1); gt 1: 1 pixel predicted 0; class 2 predicted
    # once without ground truth; class 3 absent everywhere.
    m = np.array([[2, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m[0, 2] = 1
    iou = metrics.iou(m)
    assert iou[0] == pytest.approx(2 / (2 + 1 + 2))  # tp 2, fp 1 (gt1->0), fn 2
    assert iou[1] == 0.0 and iou[2] == 0.0 and np.isnan(iou[3])
    assert metrics.mean_iou(m) == pytest.approx(0.4 / 3)
    assert metrics.pixel_accuracy(m) == pytest.approx(2 / 5)
    assert np.isnan(metrics.mean_iou(np.zeros((4, 4), int)))  # no pixel: NaN, not 0


def test_all_ignored_batch_counts_nothing():
    label = np.full((2, 5, 5), labels.IGNORE, np.int32)
    pred = np.zeros((2, 5, 5), np.int32)
    assert int(np.asarray(_cm(pred, label, 19)).sum()) == 0


def test_miou13_of_16_is_the_originals_mIoU_star():
    rng = np.random.default_rng(7)
    m = rng.integers(0, 1000, (16, 16))
    m[5, :] = 0  # pole absent from gt and predictions: a NaN in the 16-class IoUs
    m[:, 5] = 0
    m[9, :] = 0  # sky (a 13-class class) absent too
    m[:, 9] = 0
    subset = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # the original's synthia_set_16_to_13
    assert list(labels.SUBSET_13_IN_16) == subset
    want = np.nanmean(numpy_iou(m)[subset])
    assert metrics.miou13_of_16(m) == pytest.approx(want, abs=1e-12)
    # It is not the score of the 13x13 sub-matrix (which drops pixels confused with
    # wall/fence/pole): the two differ on this matrix.
    sub = m[np.ix_(subset, subset)]
    assert abs(metrics.mean_iou(sub) - want) > 1e-3
    # The 13 selected entries are the 13-class set's classes, by name.
    names16 = labels.class_names(16)
    assert [names16[i] for i in subset] == list(labels.class_names(13))
    with pytest.raises(ValueError, match="16x16"):
        metrics.miou13_of_16(m[:13, :13])


def test_summarize_names_and_scores():
    for c in (19, 16, 13):
        s = metrics.summarize(np.eye(c, dtype=int) * 5)
        assert s["classes"] == list(labels.class_names(c)) and len(s["iou"]) == c
        assert s["miou"] == 1.0 and s["pixels"] == 5 * c
        assert ("miou13" in s) == (c == 16)
    s = metrics.summarize(np.zeros((19, 19), int))
    assert s["iou"] == [None] * 19  # JSON-ready: NaN becomes null


def test_accumulator_is_exact_across_flushes(monkeypatch):
    monkeypatch.setattr(metrics, "_INT32_LIMIT", 1000)  # force a flush every few batches
    acc = metrics.ConfusionAccumulator(13)
    total = np.zeros((13, 13), np.int64)
    for seed in range(7):
        pred, label, mask = _random_batch(seed, 13, shape=(3, 9, 11))
        m = _cm(pred, label, 13, mask=mask)
        acc.add(m, pixels=label.size)
        total += np.asarray(m)
    np.testing.assert_array_equal(acc.result(), total)
    np.testing.assert_array_equal(acc.result(), total)  # result() is repeatable


def test_published_rows_are_consistent():
    gta = published.result("cityscapes", 19)
    assert gta.method == "iw_multi" and gta.miou == 46.4
    # The per-class row averages to the published mIoU (rounding of 19 one-decimal values).
    assert np.mean(gta.per_class) == pytest.approx(46.4, abs=0.06)
    syn = published.result("cityscapes", 16, "source")
    assert (syn.miou, syn.miou13) == (30.1, 34.3)
    assert published.result("nthu-taipei", 13).miou == 50.6
    assert published.result("nthu-rome", 13, "minent") is None
    assert published.result("cityscapes", 13) is None
    assert [r.method for r in published.results("nthu-rio", 13)] == [
        "source", "maxsquare", "iw"]  # fmt: skip
