"""Bad arguments of msjax.prepare, convert, evaluate and predict, tried as a user would.

Each command runs in this process through its `main(argv)` (the real argument parser and
`msjax.cli.run`). Every case checks exit status 2, one `error:` line naming the argument,
no traceback, and that nothing was written or lost; the cases and their messages are
listed in docs/errors.md (CATALOGUE in tests/helpers.py).
"""

import contextlib
import errno
import io
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msjax import convert, evaluate, ownership, predict, prepare
from msjax.data import builders
from msjax.evaluation import predictor, visualize
from tests.helpers import (
    IMAGE_H,
    IMAGE_W,
    evaluate_args,
    make_gta5,
    predict_args,
    refused,
    save_random_checkpoint,
    tree,
    truncate,
    write_png16,
)
from tests.reference.deeplabv2_torch import DeepLabV2Torch, randomize_, save_in_layout

# ---- prepare ---------------------------------------------------------------------------


def _folder_splits() -> list[str]:
    """`--split-lists none` where msjax.prepare has it: the fake raw folders hold a few
    pairs, not the original's lists (a branch without the flag uses the folders anyway)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            prepare.parse_args(["gta5", "--data-dir", "D", "--split-lists", "none"])
    except SystemExit:
        return []
    return ["--split-lists", "none"]


FOLDER_SPLITS = _folder_splits()


def prepare_main(argv) -> int:
    """msjax.prepare's entry point on a fake raw folder (its own splits)."""
    return prepare.main([*map(str, argv), *FOLDER_SPLITS])


@pytest.fixture(scope="module")
def gta5(tmp_path_factory):
    """A GTA5 raw folder, one whose second label is RGB, and a data dir prepared from the first."""
    root = tmp_path_factory.mktemp("gta5")
    make_gta5(root / "raw", n=3, orphans=False)
    make_gta5(root / "bad", n=3, orphans=False)
    Image.fromarray(np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)).save(
        root / "bad" / "labels" / "00002.png"
    )
    return root


def prepared_copy(gta5, tmp_path) -> Path:
    data = tmp_path / "data"
    assert prepare_main(["gta5", gta5 / "raw", "--data-dir", data, "--no-progress"]) == 0
    return data


@pytest.mark.parametrize(
    "args, case",
    [
        (["--data-dir", "FILE"], "prepare data dir that is a file"),
        (["--data-dir", "FILE/sub"], "prepare data dir under a file"),
        (["--data-dir", ""], "prepare empty data dir"),
        (["--data-dir", "D", "--workers", "-2"], "prepare negative workers"),
        (["--data-dir", "D", "--workers", "0"], "prepare zero workers"),
        (["--data-dir", "D", "--max-examples", "0"], "prepare zero examples"),
        (["--data-dir", "D", "--max-examples", "-1"], "prepare negative examples"),
        (["--data-dir", "D", "RAW=FILE"], "prepare raw dir that is a file"),
        (["--data-dir", "D", "DATASET=synthetic-source"], "prepare synthetic with a raw dir"),
    ],
)
def test_prepare_arguments(gta5, tmp_path, capsys, args, case):
    (tmp_path / "FILE").write_text("a file")
    dataset, raw = "gta5", str(gta5 / "raw")
    rest = []
    for arg in args:
        if arg.startswith("RAW="):
            raw = str(tmp_path / arg[4:])
        elif arg.startswith("DATASET="):
            dataset = arg[8:]
        else:
            rest.append(str(tmp_path / arg) if arg in ("FILE", "FILE/sub", "D") else arg)
    refused(capsys, prepare_main, [dataset, raw, *rest], case)
    assert sorted(os.listdir(tmp_path)) == ["FILE"]  # nothing created


def test_prepare_overwrite_that_fails_keeps_the_prepared_data(gta5, tmp_path, capsys):
    """TFDS deletes a prepared data set before rebuilding it: a failed rebuild must not."""
    data = prepared_copy(gta5, tmp_path)
    before = tree(data)
    args = ["gta5", gta5 / "bad", "--data-dir", data, "--overwrite", "--no-progress"]
    err = refused(capsys, prepare_main, args, "prepare --overwrite from a bad raw folder")
    assert "00002.png has mode RGB" in err
    assert tree(data) == before
    assert builders.load_builder("gta5", "1280x720", data).info.splits["train"].num_examples == 3
    # A good rebuild replaces it.
    args = ["gta5", gta5 / "raw", "--data-dir", data, "--overwrite", "--no-progress"]
    assert prepare_main([*args, "--max-examples", "2"]) == 0
    assert builders.load_builder("gta5", "1280x720", data).info.splits["train"].num_examples == 2
    assert sorted(os.listdir(data / "gta5" / "1280x720")) == ["1.0.0"]


def test_prepare_interrupted_keeps_the_prepared_data(gta5, tmp_path, capsys, monkeypatch):
    data = prepared_copy(gta5, tmp_path)
    before = tree(data)
    real = builders.process_pair

    def interrupted(pair, *args):
        if pair.image.name == "00002.png":
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        return real(pair, *args)

    monkeypatch.setattr(builders, "process_pair", interrupted)
    args = ["gta5", str(gta5 / "raw"), "--data-dir", str(data), "--overwrite", "--no-progress"]
    assert prepare_main(args + ["--workers", "1"]) == 130
    err = capsys.readouterr().err
    assert "Interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert tree(data) == before and sorted(os.listdir(data / "gta5" / "1280x720")) == ["1.0.0"]


# ---- convert ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    """Tiny .pth files: the DeepLab init layout, empty, garbage, and with a pickled object."""
    root = tmp_path_factory.mktemp("pth")
    model = randomize_(DeepLabV2Torch(num_classes=19, blocks=(1, 1, 1, 1), width=8))
    save_in_layout(model, "deeplab-init", str(root / "init.pth"))
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.pth").write_bytes(b"hello world" * 10)
    torch.save({"state_dict": {}, "args": Path("/somewhere")}, root / "objects.pth")
    return root


@pytest.mark.parametrize(
    "src, args, case",
    [
        ("init.pth", ["OUT", "--num-classes", "0"], "convert zero classes"),
        ("init.pth", ["OUT", "--num-classes", "-3"], "convert negative classes"),
        ("init.pth", ["OUT", "--num-classes", "7"], "convert unusable class count"),
        ("init.pth", ["FILE"], "convert OUT_DIR that is a file"),
        ("init.pth", ["FILE/sub"], "convert OUT_DIR under a file"),
        ("init.pth", [""], "convert empty OUT_DIR"),
        ("init.pth", ["OUT", "--seed", "-1"], "convert negative seed"),
        ("empty.pth", ["OUT"], "convert empty .pth"),
        ("garbage.pth", ["OUT"], "convert garbage .pth"),
        ("objects.pth", ["OUT"], "convert .pth with Python objects"),
    ],
)
def test_convert_arguments(pth, tmp_path, capsys, src, args, case):
    (tmp_path / "FILE").write_text("a file")
    args = [str(tmp_path / a) if a in ("OUT", "FILE", "FILE/sub") else a for a in args]
    refused(capsys, convert.main, [pth / src, *args], case)
    assert sorted(os.listdir(tmp_path)) == ["FILE"]


def test_convert_into_part_of_a_weights_folder(pth, tmp_path, capsys):
    assert convert.main([str(pth / "init.pth"), str(tmp_path / "w")]) == 0
    before = tree(tmp_path / "w")
    args = [pth / "init.pth", tmp_path / "w" / "variables", "--force"]
    refused(capsys, convert.main, args, "convert --force into a folder of other files")
    assert tree(tmp_path / "w") == before


# ---- evaluate --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "w"
    save_random_checkpoint(path, num_classes=19)
    return path


@pytest.mark.parametrize(
    "out, data, case",
    [
        ("FILE", "DATA", "evaluate --out that is a file"),
        ("FILE/x", "DATA", "evaluate --out under a file"),
        ("", "DATA", "evaluate empty --out"),
        ("o", "missing", "evaluate missing --data-dir"),
        ("o", "FILE", "evaluate --data-dir that is a file"),
        ("o", "DATA", "evaluate empty --split"),
    ],
)
def test_evaluate_arguments(weights_dir, smoke_data_dir, tmp_path, capsys, out, data, case):
    (tmp_path / "FILE").write_text("a file")
    out = str(tmp_path / out) if out else ""
    data = smoke_data_dir if data == "DATA" else str(tmp_path / data)
    args = evaluate_args(weights_dir, data, out, "--save-predictions")
    if case == "evaluate empty --split":
        args += ["--split", ""]
    refused(capsys, evaluate.main, args, case)
    assert sorted(os.listdir(tmp_path)) == ["FILE"]


def test_evaluate_of_a_run_folder_names_its_weights(smoke_data_dir, tmp_path, capsys):
    save_random_checkpoint(tmp_path / "run" / "final")
    args = evaluate_args(tmp_path / "run", smoke_data_dir, tmp_path / "o")
    err = refused(capsys, evaluate.main, args, "evaluate a run folder")
    assert str(tmp_path / "run" / "final") in err


def test_evaluate_that_fails_keeps_the_earlier_report(
    weights_dir, smoke_data_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    args = evaluate_args(weights_dir, smoke_data_dir, out, "--save-predictions")
    assert evaluate.main([str(a) for a in args]) == 0
    before = tree(out)
    assert "results.json" in before and len([k for k in before if "predictions/" in k]) == 24
    capsys.readouterr()

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(visualize, "iou_bar_chart", disk_full)
    refused(capsys, evaluate.main, args, "evaluate disk full while writing the report")
    assert tree(out) == before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(visualize, "iou_bar_chart", interrupted)
    assert evaluate.main([str(a) for a in args]) == 130
    assert tree(out) == before
    assert sorted(os.listdir(out)) == [ownership.MARKER, "iou.png", "notes.txt", "predictions",
                                       "results.json", "results.md"]  # fmt: skip


# ---- predict ---------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img" / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "sub/c.png"):
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), np.uint8)).save(tmp_path / "img" / name)
    return tmp_path / "img"


@pytest.mark.parametrize(
    "args, case",
    [
        (["--alpha", "nan"], "predict alpha nan"),
        (["--alpha", "2"], "predict alpha out of range"),
        (["--out", "FILE"], "predict --out that is a file"),
        (["--out", ""], "predict empty --out"),
        (["--images", ""], "predict empty --images"),
        ([], "predict two images with one output name"),
        ([], "predict a file that is no image"),
        ([], "predict a decompression bomb"),
    ],
)
def test_predict_arguments(weights_dir, images, tmp_path, capsys, args, case):
    (tmp_path / "FILE").write_text("a file")
    if case == "predict two images with one output name":
        Image.open(images / "a.png").save(images / "a.jpg")
    if case == "predict a file that is no image":
        (images / "sub" / "zero.png").write_bytes(b"")
    if case == "predict a decompression bomb":  # a header claiming 20000x20000 pixels
        write_png16(images / "sub" / "huge.png", np.zeros((1, 1), np.uint16))
        data = bytearray((images / "sub" / "huge.png").read_bytes())
        data[16:24] = (20000).to_bytes(4, "big") * 2
        data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
        (images / "sub" / "huge.png").write_bytes(bytes(data))
    flags = {"--checkpoint": str(weights_dir), "--images": str(images),
             "--out": str(tmp_path / "out")}  # fmt: skip
    for key, value in zip(args[::2], args[1::2], strict=True):
        flags[key] = str(tmp_path / value) if value == "FILE" else value
    argv = [x for kv in flags.items() for x in kv] + ["--input-size", "24", "--no-progress"]
    refused(capsys, predict.main, argv, case)
    assert not (tmp_path / "out").exists()


def test_predict_that_fails_half_way_leaves_out_as_it_was(weights_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main([str(a) for a in predict_args(weights_dir, images, out)]) == 0
    before = tree(out)
    assert len(before) == 6 + 1  # and the folder's mark (msjax.ownership)
    truncate(images / "sub" / "c.png")  # the header reads; the pixels do not
    refused(capsys, predict.main, predict_args(weights_dir, images, out), "predict truncated image")
    assert tree(out) == before


def test_predict_out_inside_the_images_folder(weights_dir, images, capsys):
    """Unchecked, a second run would take the first run's pictures for inputs (and so on)."""
    out = images / "pred"
    for _ in range(2):
        assert predict.main([str(a) for a in predict_args(weights_dir, images, out)]) == 0
        assert "wrote 6 files" in capsys.readouterr().out
    assert len(tree(out)) == 6 + 1  # and the folder's mark


def test_odd_image_files_are_read_as_a_viewer_shows_them(tmp_path):
    ramp = (np.arange(40 * 24, dtype=np.uint32).reshape(24, 40) * 60).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # 16-bit grey
    image = predictor.read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(image[..., 0], ramp >> 8)  # was clipped to 255 (white)
    photo = Image.fromarray(np.zeros((24, 40, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    assert predictor.read_image(tmp_path / "rotated.jpg").shape == (40, 24, 3)
