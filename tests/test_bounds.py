"""Bounded memory on any input: sizes checked from headers and flags before any work.

predict on a 10000x10000 PNG was killed by the kernel at 11.2 GB with no message (its
upsampled probabilities alone are 7.6 GB); `--input-size 100000` on a small image too.
Images up to the limit are labelled with the probabilities made a band of rows at a time;
larger ones, and network inputs over the bound, are refused from their headers before
the model loads. Evaluation batch sizes have a bound and are capped at the split's size.
"""

import warnings
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from msjax import evaluate, predict
from msjax.evaluation import inference, predictor
from tests.helpers import (
    CATALOGUE,
    evaluate_args,
    predict_args,
    random_variables,
    refused,
    save_random_checkpoint,
    write_png16,
)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "w"
    save_random_checkpoint(path, num_classes=19)
    return path


def header_only_png(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (its pixels are not there)."""
    write_png16(path, np.zeros((1, 1), np.uint16))
    data = bytearray(path.read_bytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_an_image_over_the_limit_is_refused_from_its_header(weights_dir, tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    header_only_png(images / "big.png", 10000, 10000)  # under PIL's bomb limit
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        err = refused(capsys, predict.main, predict_args(weights_dir, images, tmp_path / "out"),
                      "predict an image over the size limit")  # fmt: skip
    assert "is 10000x10000 (100.0 Mpx)" in err
    assert not [w for w in warned if issubclass(w.category, Image.DecompressionBombWarning)]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size, image", [("100000", (40, 24)), ("native", (8000, 6000))])
def test_a_network_input_over_the_bound_is_refused_before_the_model_loads(
    weights_dir, tmp_path, capsys, monkeypatch, size, image
):
    images = tmp_path / "img"
    images.mkdir()
    header_only_png(images / "a.png", *image)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predictor.Predictor, "__init__", no_loading)
    args = [*predict_args(weights_dir, images, tmp_path / "out")[:-3], "--input-size", size]
    err = refused(capsys, predict.main, args, "predict --input-size too large")
    assert f"--input-size {size} for {images / 'a.png'}" in err


@pytest.mark.parametrize(
    "views", [inference.SINGLE_VIEW, inference.Views(flip=True, scales=(0.75, 1.0))]
)
def test_banded_labels_are_the_full_computations(views, monkeypatch):
    """The bands use rows of the same interpolation matrix: the labels agree with the
    one-shot computation wherever its two best classes are not within round-off."""
    model, variables = random_variables(19, seed=3)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(1, 40, 56, 3)), jnp.float32)
    target = (101, 131)  # rows not a multiple of the band
    monkeypatch.setattr(inference, "BAND_BYTES", 7 * 131 * 19 * 4 * 2)  # bands of 7 or 3 rows
    banded = inference.make_banded_predict_fn(model, target, views)(variables, images)
    probs = np.asarray(inference.probabilities(model, variables, images, target, views))[0]
    top2 = np.sort(probs, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-5
    assert banded.shape == target and banded.dtype == np.uint8
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(banded[clear], probs.argmax(-1)[clear])
    assert len(np.unique(banded)) > 3  # a real label map, not one class


def test_a_large_photo_is_labelled_in_bands(weights_dir, tmp_path, monkeypatch):
    """Above inference.BAND_BYTES of probabilities, Predictor takes the banded path."""
    calls = []
    banded = inference.make_banded_predict_fn
    monkeypatch.setattr(inference, "make_banded_predict_fn",
                        lambda *a, **k: calls.append(a[1]) or banded(*a, **k))  # fmt: skip
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (1200, 1600, 3), np.uint8)  # 1.9 Mpx: 146 MB of probabilities
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    assert (
        predict.main([str(a) for a in predict_args(weights_dir, tmp_path / "photo.jpg", out)]) == 0
    )
    assert calls == [(1200, 1600)]
    labels = np.asarray(Image.open(out / "photo_color.png"))
    assert labels.shape == (1200, 1600, 3)


def test_evaluate_sizes_are_bounded_and_the_batch_capped(
    weights_dir, smoke_data_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    args = evaluate_args(weights_dir, smoke_data_dir, out, "--batch-size", "100000")
    refused(capsys, evaluate.main, args, "evaluate --batch-size too large")
    args = evaluate_args(weights_dir, smoke_data_dir, out, "--scales", "1,100")
    refused(capsys, evaluate.main, args, "evaluate --scales too large")
    assert not out.exists()
    args = evaluate_args(weights_dir, smoke_data_dir, out, "--batch-size", "40")
    assert evaluate.main([str(a) for a in args]) == 0
    assert CATALOGUE["evaluate --batch-size over the split"] in capsys.readouterr().out
