"""Prediction pictures: palette colours, overlays, Cityscapes label ids, the predict CLI."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from msjax import predict
from msjax.data import labels
from msjax.evaluation import visualize
from tests.helpers import save_random_checkpoint


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_colorize_uses_the_palette(num_classes):
    ids = np.array([[*range(num_classes), labels.IGNORE, 200]] * 2)  # [2, C + 2]
    rgb = visualize.colorize(jnp.asarray(ids)[None], num_classes)  # JAX input, batch dim
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, num_classes + 2, 3)
    np.testing.assert_array_equal(rgb[0, 0, :num_classes], labels.palette(num_classes))
    assert (rgb[0, :, num_classes:] == 0).all()  # ignore and unknown ids are black
    # Colours follow the class, not its index: a 16- or 13-class car is the 19-class blue.
    car = labels.class_names(num_classes).index("car")
    np.testing.assert_array_equal(rgb[0, 0, car], [0, 0, 142])


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_cityscapes_ids_round_trip(num_classes):
    ids = visualize.to_cityscapes_ids(np.arange(num_classes + 1), num_classes)
    names = labels.class_names(num_classes)
    by_id = {lab.id: lab.name for lab in labels.CITYSCAPES_LABELS}
    assert [by_id[i] for i in ids[:num_classes]] == list(names)
    assert ids[num_classes] == 0  # outside the subset: 'unlabeled'
    if num_classes == 19:
        assert list(ids[:3]) == [7, 8, 11] and list(ids[-3:-1]) == [32, 33]


def test_overlay_and_panel():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    label_map = rng.integers(0, 19, (2, 4, 5))
    label_map[0, 0, 0] = labels.IGNORE
    color = visualize.colorize(label_map)
    out = visualize.overlay(image, color, alpha=0.25, label_map=label_map)
    want = np.rint(0.75 * image.astype(float) + 0.25 * color.astype(float))
    want[0, 0, 0] = image[0, 0, 0]  # ignored pixels show the image unchanged
    np.testing.assert_array_equal(out, want.astype(np.uint8))
    p = visualize.panel(image, label_map, label_map, 19)
    assert p.shape == (2, 4, 15, 3)
    np.testing.assert_array_equal(p[..., 5:10, :], p[..., 10:, :])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:32, 0:64]
    a = np.stack([xx * 4, yy * 8, (xx + yy) * 2], -1) + rng.integers(0, 40, (32, 64, 3))
    (root / "city").mkdir()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / "city" / "a_leftImg8bit.png")
    b = rng.integers(0, 256, (38, 50, 3), dtype=np.uint8)  # another size, a JPEG
    Image.fromarray(b).save(root / "b.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for c in (19, 16):
        save_random_checkpoint(root / f"c{c}", num_classes=c, seed=c)
    return root


def _check_outputs(out, image_path, stem, num_classes):
    image = np.asarray(Image.open(image_path).convert("RGB"))
    color = np.asarray(Image.open(out / f"{stem}_color.png"))
    ids = np.asarray(Image.open(out / f"{stem}_labelIds.png"))
    overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
    assert color.shape == overlay.shape == image.shape and ids.shape == image.shape[:2]
    palette = labels.palette(num_classes)
    # Every colour is a palette colour, the one of the class the label-id PNG holds.
    id_to_subset = {visualize.to_cityscapes_ids(np.array([k]), num_classes)[0]: k
                    for k in range(num_classes)}  # fmt: skip
    assert set(np.unique(ids)) <= set(id_to_subset)
    subset = np.vectorize(id_to_subset.get)(ids)
    np.testing.assert_array_equal(color, palette[subset])
    assert len(np.unique(subset)) > 2  # the random network predicts several classes
    blend = 0.5 * image.astype(float) + 0.5 * color.astype(float)
    assert np.abs(overlay - blend).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("input_size", ["native", "24"])
def test_predict_cli_writes_palette_pngs(images, checkpoints, tmp_path, input_size):
    rc = predict.main(["--checkpoint", str(checkpoints / "c19"), "--images", str(images),
                       "--out", str(tmp_path), "--label-ids", "--no-progress",
                       "--input-size", input_size])  # fmt: skip
    assert rc == 0
    # Folders are kept; the Cityscapes '_leftImg8bit' suffix is replaced by the output kind.
    _check_outputs(tmp_path / "city", images / "city" / "a_leftImg8bit.png", "a", 19)
    _check_outputs(tmp_path, images / "b.jpg", "b", 19)
    assert len(list(tmp_path.rglob("*.png"))) == 6


def test_sixteen_class_checkpoint_and_glob(images, checkpoints, tmp_path):
    rc = predict.main(["--checkpoint", str(checkpoints / "c16"), "--images",
                       str(images / "**" / "*.png"), "--out", str(tmp_path), "--label-ids",
                       "--no-progress", "--input-size", "native", "--flip"])  # fmt: skip
    assert rc == 0
    _check_outputs(tmp_path, images / "city" / "a_leftImg8bit.png", "a", 16)
    ids = np.asarray(Image.open(tmp_path / "a_labelIds.png"))
    assert not set(np.unique(ids)) & {22, 27, 31}  # terrain, truck, train: not in 16 classes


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--images", "/nonexistent/*.png"], "matches no image"),
        (["--images", "BROKEN"], "cannot read image"),
        (["--input-size", "wide"], "--input-size"),
        (["--checkpoint", "/nonexistent"], "is not a converted weights folder: it does not exist"),
    ],
)
def test_predict_errors(images, checkpoints, tmp_path, capsys, flags, message):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = {"--checkpoint": str(checkpoints / "c19"), "--images": str(images / "b.jpg"),
            "--out": str(tmp_path / "out")}  # fmt: skip
    for key, value in zip(flags[::2], flags[1::2], strict=True):
        args[key] = str(broken) if value == "BROKEN" else value
    rc = predict.main([x for kv in args.items() for x in kv] + ["--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
