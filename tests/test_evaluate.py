"""Evaluation: test-time averaging, both protocols by hand, the official Cityscapes evaluator.

One fixture Cityscapes folder (64x32 frames; three val images, so a batch of two needs
padding) is prepared at `1024x512` and `full`; a tiny random DeepLabV2 with He-scaled weights
(many classes per image) is saved in the msjax.weights format and evaluated.
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from msjax import evaluate, predict
from msjax.data import labels
from msjax.evaluation import inference, metrics, protocol, report
from tests.helpers import (
    make_cityscapes,
    numpy_confusion,
    numpy_iou,
    random_variables,
    save_random_checkpoint,
)

VAL = {"train": [("aachen", 1)], "val": [("frankfurt", 2), ("lindau", 1)]}
CAFFE_BGR_MEAN = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from msjax.data import preparation

    root = tmp_path_factory.mktemp("eval")
    raw = root / "raw"
    make_cityscapes(raw, per_split=VAL)
    for config in ("1024x512", "full"):
        preparation.prepare_one(
            "cityscapes", config, root / "tfds", raw_dir=raw, split_lists="none"
        )
    model, variables = save_random_checkpoint(root / "ckpt", num_classes=19)
    full = protocol.evaluate(
        root / "ckpt",
        "cityscapes",
        root / "tfds",
        protocol="full",
        predictions_dir=root / "pred_full",
        progress=False,
    )
    return dict(root=root, raw=raw, model=model, variables=variables, full=full)


def _val_pairs(raw):
    images = sorted(glob.glob(str(raw / "leftImg8bit" / "val" / "*" / "*_leftImg8bit.png")))
    return [
        (p, p.replace("leftImg8bit", "gtFine").replace(".png", "_labelIds.png")) for p in images
    ]


def _train_ids(path, size=None):
    """Raw Cityscapes ids -> train ids with the table itself, resized nearest if asked."""
    ids = np.asarray(Image.open(path))
    lut = np.full(256, 255, np.uint8)
    for raw_id, train_id in labels.CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[raw_id] = train_id
    out = Image.fromarray(lut[ids])
    return np.asarray(out.resize(size, Image.NEAREST) if size else out)


def _network_input(path):
    image = Image.open(path).convert("RGB").resize((1024, 512), Image.BICUBIC)
    return (np.asarray(image, np.float32)[..., ::-1] - CAFFE_BGR_MEAN)[None]


_LAYER6 = {}


def _layer6(model, variables, x):
    """The main head's output, read with Flax's own capture of every module's output."""
    if id(model) not in _LAYER6:

        def fn(v, x):
            _, state = model.apply(v, x, train=False, capture_intermediates=True)
            return state["intermediates"]["layer6"]["__call__"][0]

        _LAYER6[id(model)] = (model, jax.jit(fn))  # keeps the model alive: ids stay unique
    return np.asarray(_LAYER6[id(model)][1](variables, jnp.asarray(x)))


def _upsample(logits, hw):
    """Feature-level logits -> hw, with PyTorch's bilinear align_corners=True."""
    t = torch.from_numpy(np.ascontiguousarray(logits.transpose(0, 3, 1, 2)))
    up = torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=True)
    return up.numpy().transpose(0, 2, 3, 1)


def test_feature_logits_reproduce_the_models_output():
    model, variables = random_variables(19)
    x = jax.random.normal(jax.random.key(1), (2, 32, 48, 3)) * 50
    main, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    feats = jax.jit(inference.feature_logits, static_argnums=0)(model, variables, x)
    assert feats.shape == (2, 5, 7, 19)
    up = inference.resize_bilinear_align_corners(feats, 32, 48)
    np.testing.assert_allclose(np.asarray(up), np.asarray(main), atol=1e-5, rtol=1e-5)


def test_flip_and_scales_average_softmax_by_hand():
    model, variables = random_variables(19, seed=3)
    x = jax.random.normal(jax.random.key(2), (2, 40, 56, 3)) * 50
    target = (48, 80)
    views = inference.Views(flip=True, scales=(0.5, 1.0, 1.5))
    probabilities = jax.jit(inference.probabilities, static_argnums=(0, 3, 4))
    got = np.asarray(probabilities(model, variables, x, target, views))
    manual = np.zeros_like(got)
    for s in views.scales:
        size = (2, round(40 * s), round(56 * s), 3)
        xs = x if s == 1.0 else jax.image.resize(x, size, "cubic", antialias=True)
        for flipped in (False, True):
            inp = xs[:, :, ::-1] if flipped else xs
            logits = _upsample(_layer6(model, variables, inp), target)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            manual += p[:, :, ::-1] if flipped else p
    manual /= 6
    np.testing.assert_allclose(got, manual, atol=2e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # Averaging changes the answer: it is not the single view's argmax everywhere.
    single = np.asarray(probabilities(model, variables, x, target, inference.Views()))
    assert (single.argmax(-1) != got.argmax(-1)).mean() > 0.01
    pred, conf = jax.jit(inference.predict, static_argnums=(0, 3, 4))(model, variables, x, target)
    np.testing.assert_array_equal(np.asarray(pred), single.argmax(-1))
    np.testing.assert_allclose(np.asarray(conf), single.max(-1), atol=1e-6)


def _hand_matrix(setup, protocol):
    model, variables = setup["model"], setup["variables"]
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    matrix = np.zeros((19, 19), np.int64)
    for image_path, label_path in _val_pairs(setup["raw"]):
        x = _network_input(image_path)
        if protocol == "original":
            pred = np.asarray(apply(variables, jnp.asarray(x))).argmax(-1)
            label = _train_ids(label_path, (1024, 512))
        else:
            label = _train_ids(label_path)
            pred = _upsample(_layer6(model, variables, x), label.shape).argmax(-1)
        matrix += numpy_confusion(pred[0], label.astype(np.int64), 19)
    return matrix


def test_original_protocol_by_hand(setup):
    # Batches of 2 over 3 images: the padded entry must not count.
    got = protocol.evaluate(setup["root"] / "ckpt", "cityscapes", setup["root"] / "tfds",
                            batch_size=2, progress=False)  # fmt: skip
    want = _hand_matrix(setup, "original")
    m = np.array(got["confusion_matrix"])
    assert (
        m.sum()
        == want.sum()
        == sum(
            int((_train_ids(lab, (1024, 512)) < 19).sum()) for _, lab in _val_pairs(setup["raw"])
        )
    )
    assert np.abs(m - want).sum() <= 2  # at most a near-tie flipped by float round-off
    assert got["scores"]["miou"] == pytest.approx(np.nanmean(numpy_iou(want)), abs=1e-4)
    assert got["label_hw"] == [512, 1024] and got["num_images"] == 3
    assert (m.sum(0) > 0).sum() > 5  # the random network predicts many classes


def test_full_protocol_by_hand(setup):
    got = setup["full"]
    want = _hand_matrix(setup, "full")
    m = np.array(got["confusion_matrix"])
    assert got["label_hw"] == [32, 64] and got["image_hw"] == [512, 1024]
    assert m.sum() == want.sum() and np.abs(m - want).sum() <= 2
    assert got["scores"]["miou"] == pytest.approx(np.nanmean(numpy_iou(want)), abs=1e-3)


def test_official_cityscapes_evaluator_agrees(setup, monkeypatch):
    """cityscapesscripts' pixel-level evaluator on msjax's label-id PNGs and the raw gtFine."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(setup["raw"]))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(setup["root"] / "pred_full"))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    for name, value in dict(predictionPath=None, predictionWalk=None, evalInstLevelScore=False,
                            JSONOutput=False, quiet=True).items():  # fmt: skip
        monkeypatch.setattr(cs.args, name, value)
    gts = sorted(glob.glob(str(setup["raw"] / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    assert len(gts) == 3
    preds = [cs.getPrediction(cs.args, gt) for gt in gts]  # the official file matching
    official = cs.evaluateImgLists(preds, gts, cs.args)
    ours = setup["full"]["scores"]
    assert official["averageScoreClasses"] == pytest.approx(ours["miou"], abs=1e-6)
    for name, value in zip(ours["classes"], ours["iou"], strict=True):
        theirs = official["classScores"][name]
        assert (value is None and np.isnan(theirs)) or theirs == pytest.approx(value, abs=1e-9)


def test_predict_cli_matches_evaluate_predictions(setup, tmp_path):
    rc = predict.main(["--checkpoint", str(setup["root"] / "ckpt"), "--images",
                       str(setup["raw"] / "leftImg8bit" / "val"), "--out", str(tmp_path),
                       "--label-ids", "--no-progress"])  # fmt: skip
    assert rc == 0
    saved = sorted((setup["root"] / "pred_full").glob("*_pred_labelIds.png"))
    assert len(saved) == 3
    for path in saved:
        key = path.name.removesuffix("_pred_labelIds.png")
        ours = np.asarray(Image.open(tmp_path / key.split("_")[0] / f"{key}_labelIds.png"))
        np.testing.assert_array_equal(ours, np.asarray(Image.open(path)))


def test_cli_prints_table_and_writes_report(setup, tmp_path, capsys):
    out = tmp_path / "report"
    rc = evaluate.main(["--checkpoint", str(setup["root"] / "ckpt"), "--dataset", "cityscapes",
                        "--data-dir", str(setup["root"] / "tfds"), "--out", str(out),
                        "--no-progress", "--flip"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("class")) + 1 :]
    # The rows are the 19 classes in train-id order, then mIoU and pixel accuracy.
    assert [ln[:20].strip() for ln in table[:19]] == list(labels.class_names(19))
    assert table[19].startswith("mIoU (19 classes)") and "46.4" in table[19]
    assert "protocol original" in text and "flip" in text and "46.4" in text
    record = json.loads((out / "results.json").read_text())
    assert record["protocol"] == "original" and record["views"]["flip"] is True
    assert record["precision"] == "highest"
    assert record["published"]["method"] == "iw_multi"
    assert np.array(record["confusion_matrix"]).shape == (19, 19)
    assert (out / "results.md").read_text().count("\n| ") == 19 + 2 + 1
    with Image.open(out / "iou.png") as chart:
        assert chart.size[0] > 400


def test_sixteen_class_report_names_and_mIoU13():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 50, (16, 16)) + np.eye(16, dtype=int) * 200
    results = dict(checkpoint="ckpt", dataset="cityscapes", split="val", num_images=1,
                   protocol="original", protocol_text="t", label_hw=[512, 1024], seconds=1.0,
                   views={"text": "single scale, no flip"})  # fmt: skip
    results["scores"] = metrics.summarize(m)
    text = report.format_table(results)
    for name in labels.class_names(16):
        assert name in text
    assert "terrain" not in text and "truck" not in text
    assert "mIoU (16 classes)" in text and "mIoU* (13 of 16)" in text
    assert "41.4" in text and "48.2" in text  # the paper's SYNTHIA MaxSquare+IW+Multi
    assert f"{100 * metrics.miou13_of_16(m):.2f}" in text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "nthu-rome"], "num_classes=19"),
        (["--dataset", "kitti"], "unknown --dataset 'kitti'; valid: gta5, synthia, cityscapes"),
        (["--dataset", "cityscapes", "--scales", "0,1"], "positive"),
        (["--dataset", "cityscapes", "--input-size", "640x320"], "1024x512"),
        (["--dataset", "cityscapes", "--protocol", "full", "--empty-data"], "msjax.prepare"),
    ],
)
def test_errors_are_one_paragraph(setup, tmp_path, capsys, flags, message):
    data_dir = tmp_path if "--empty-data" in flags else setup["root"] / "tfds"
    flags = [f for f in flags if f != "--empty-data"]
    rc = evaluate.main(["--checkpoint", str(setup["root"] / "ckpt"), "--data-dir", str(data_dir),
                        "--out", str(tmp_path / "o"), "--no-progress", *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o" / "results.json")


def test_settings_name_the_prepared_configs():
    s = protocol.resolve("nthu-rome", "full", None, "1024x512")
    assert (s.dataset.name, s.split, s.image_size, s.label_size) == (
        "nthu-rome", "test", "1024x512", "full")  # fmt: skip
    assert s.dataset.class_counts == (13,)
    s = protocol.resolve("cityscapes", "original", None, "1280x640")
    assert (s.split, s.image_size, s.label_size) == ("val", "1280x640", "1280x640")
    assert protocol.resolve("gta5", "original", None, None).image_size == "1280x720"
