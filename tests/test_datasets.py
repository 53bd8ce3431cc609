"""TFDS builders on fake raw folders, the prepare CLI, and every bad input of a raw folder.

Builds run the real loaders on tiny files in the exact download layouts (tests/helpers.py);
stored examples are compared pixel by pixel with an independent PIL reading of the raw files.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msjax import prepare
from msjax.data import builders, datasets, labels, preparation, split_lists, synthetic
from msjax.errors import DataError
from tests.helpers import (
    IMAGE_H,
    IMAGE_W,
    make_cityscapes,
    make_gta5,
    make_nthu,
    make_synthia,
    truncate,
)

RAW_CONFIGS = [
    ("gta5", "1280x720"),
    ("gta5", "full"),
    ("synthia", "1280x760"),
    ("synthia", "full"),
    ("cityscapes", "1024x512"),
    ("cityscapes", "1280x640"),
    ("cityscapes", "full"),
] + [(f"nthu-{city}", s) for city in datasets.NTHU_CITIES for s in ("1024x512", "full")]
SYNTHETIC_CONFIGS = [(n, s) for n, d in datasets.DATASETS.items() if d.generated for s in d.sizes]


def test_every_config_is_covered():
    listed = set(RAW_CONFIGS) | set(SYNTHETIC_CONFIGS)
    assert listed == {(n, s) for n, d in datasets.DATASETS.items() for s in d.all_sizes}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return {
        "gta5": (root / "gta5", make_gta5(root / "gta5")),
        "synthia": (root / "synthia", make_synthia(root / "synthia")),
        "cityscapes": (root / "cityscapes", make_cityscapes(root / "cityscapes")),
        "nthu": (root / "nthu", make_nthu(root / "nthu")),
    }


def read_prepared(dataset, config, data_dir):
    """{split: {id: (image, label)}} decoded from a prepared data set."""
    builder = builders.load_builder(dataset, config, data_dir)
    out = {}
    for split in builder.info.splits:
        ds = builder.as_dataset(split=split)
        out[split] = {
            ex["id"].decode(): (ex["image"], ex["label"][..., 0]) for ex in ds.as_numpy_iterator()
        }
    return out


def expected(image_path, ids, table, size):
    """Independent reference: PIL bicubic image, nearest label of the mapped ids."""
    image = Image.open(image_path).convert("RGB")
    h, w = np.asarray(image).shape[:2]
    train = labels.id_to_train_id_lut(table)[np.minimum(ids, 255)] if ids is not None else None
    if train is None:
        train = np.full((h, w), 255, np.uint8)
    label = Image.fromarray(train.astype(np.uint8))
    if size is not None:
        image, label = image.resize(size, Image.BICUBIC), label.resize(size, Image.NEAREST)
    return np.asarray(image), np.asarray(label)


def _raw_files(dataset, root, key):
    if dataset == "gta5":
        return root / "images" / f"{key}.png"
    if dataset == "synthia":
        return root / "RGB" / f"{key}.png"
    if dataset == "cityscapes":
        return next(root.glob(f"leftImg8bit/*/*/{key}_leftImg8bit.png"))
    city, name = key
    return next(root.glob(f"{city.capitalize()}/Images/*/{name}.jpg"))


def _city(dataset):
    return dataset.split("-", 1)[1] if dataset.startswith("nthu-") else None


@pytest.mark.parametrize("dataset, config", RAW_CONFIGS)
def test_builder_pixel_by_pixel(raw, tmp_path, dataset, config):
    root, truth = raw[dataset.split("-")[0]]
    summary = preparation.prepare_one(dataset, config, tmp_path, raw_dir=root, split_lists="none")
    stored = read_prepared(dataset, config, tmp_path)
    size = builders.builder_class(dataset).builder_configs[config].size
    table = "synthia" if dataset == "synthia" else "cityscapes"
    city = _city(dataset)
    if city:
        truth = {k[1]: v for k, v in truth.items() if k[0] == city}
    n_stored = sum(len(v) for v in stored.values())
    assert n_stored == len(truth) == sum(summary["splits"].values())
    for split_examples in stored.values():
        for key, (image, label) in split_examples.items():
            lookup = (city, key) if city else key
            want_image, want_label = expected(
                _raw_files(dataset, root, lookup), truth[key][1], table, size
            )
            if size is not None:
                assert image.shape[:2] == (size[1], size[0])
            np.testing.assert_array_equal(image, want_image, err_msg=key)
            np.testing.assert_array_equal(label, want_label, err_msg=key)
    if dataset == "cityscapes":
        assert set(stored) == {"train", "val"} and len(stored["val"]) == 2
    if city:
        assert set(stored) == {"train", "test"}
        assert all((lab == 255).all() for _, lab in stored["train"].values())


@pytest.mark.parametrize("dataset, config", SYNTHETIC_CONFIGS)
def test_synthetic_builders(tmp_path, dataset, config):
    preparation.prepare_one(dataset, config, tmp_path, max_examples=3)
    stored = read_prepared(dataset, config, tmp_path)
    w, h = builders.builder_class(dataset).builder_configs[config].size
    domain = datasets.get(dataset).domain
    for split, examples in stored.items():
        assert len(examples) == 3
        for key, (image, label) in examples.items():
            index = int(key.rsplit("_", 1)[1])
            want_image, want_label = synthetic.render(domain, split, index, height=h, width=w)
            np.testing.assert_array_equal(image, want_image)
            np.testing.assert_array_equal(label, want_label)


def test_outside_values_become_ignore_and_are_counted(raw, tmp_path):
    root, truth = raw["gta5"]
    summary = preparation.prepare_one("gta5", "full", tmp_path, raw_dir=root, split_lists="none")
    assert summary["outside_pixels"] == 3 and summary["outside_files"] == 1
    stored = read_prepared("gta5", "full", tmp_path)["train"]
    assert (stored["00001"][1][0, :3] == 255).all()
    text = preparation.format_summary(summary)
    assert "outside the table: 3 pixels in 1 files" in text


def test_cli_summary_lists_orphans(raw, tmp_path, capsys):
    root, _ = raw["gta5"]
    args = ["gta5", str(root), "--data-dir", str(tmp_path), "--size", "full", "--no-progress"]
    args += ["--split-lists", "none"]
    assert prepare.main(args) == 0
    out = capsys.readouterr().out
    assert "pairs prepared: train: 4" in out
    assert "splits: as the raw folders give them (no split lists)" in out
    assert "image without label (1)" in out and "00005.png" in out
    assert "label without image (1)" in out and "00006.png" in out
    assert "stored label histogram" in out and "road" in out
    assert "raw image sizes: 64x32: 4" in out
    assert prepare.main(args) == 0  # second run reuses the prepared data
    out = capsys.readouterr().out
    assert "already prepared" in out and "splits: as the raw folders give them" in out


def test_split_lists(raw, tmp_path, capsys):
    root, _ = raw["gta5"]
    (tmp_path / "train.txt").write_text("00001.png\n00002.png\n")
    (tmp_path / "val.txt").write_text("images/00003.png\n00077.png\n")
    args = ["gta5", str(root), "--data-dir", str(tmp_path / "d"), "--size", "full"]
    args += ["--split-list", f"train={tmp_path / 'train.txt'}"]
    args += ["--split-list", f"val={tmp_path / 'val.txt'}", "--no-progress"]
    # A listed pair missing on disk stops the run, naming it ...
    err = _error(capsys, args)
    assert "1 listed pair(s) are not in" in err and str(root / "images" / "00077.png") in err
    assert "--skip-bad" in err and "--split-lists none" in err
    # ... or, with --skip-bad, is listed in the summary.
    assert prepare.main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "pairs prepared: train: 2, val: 1" in out
    assert f"train = {tmp_path / 'train.txt'} (2 listed, 0 missing on disk)" in out
    assert f"val = {tmp_path / 'val.txt'} (2 listed, 1 missing on disk)" in out
    assert "not in any split list (1)" in out
    assert "listed but not on disk (--skip-bad) (1): " + str(root / "images" / "00077.png") in out


def test_original_format_list_holds_exactly_those_pairs(raw, tmp_path, capsys):
    """The original's GTA5 ids are unpadded integers: `1` is images/00001.png."""
    root, truth = raw["gta5"]
    (tmp_path / "train.txt").write_text("1\n3\n")
    args = ["gta5", str(root), "--data-dir", str(tmp_path / "d"), "--size", "full"]
    args += ["--split-list", f"train={tmp_path / 'train.txt'}", "--no-progress"]
    assert prepare.main(args) == 0
    listed = f"splits from lists: train = {tmp_path / 'train.txt'} (2 listed, 0 missing on disk)"
    assert listed in capsys.readouterr().out
    # Prepared data sets record what defined their splits: a second run says so.
    assert prepare.main(args) == 0
    out = capsys.readouterr().out
    assert "already prepared (train: 2)" in out and listed in out
    stored = read_prepared("gta5", "full", tmp_path / "d")
    assert set(stored) == {"train"} and set(stored["train"]) == {"00001", "00003"}
    np.testing.assert_array_equal(stored["train"]["00003"][0], truth["00003"][0])


def test_synthia_and_cityscapes_original_formats(raw, tmp_path):
    root, _ = raw["synthia"]
    (tmp_path / "s.txt").write_text("0\n2\n")  # the original's SYNTHIA ids: 0000000.png, ...
    s = preparation.prepare_one(
        "synthia", "full", tmp_path / "d", raw_dir=root, split_lists={"val": tmp_path / "s.txt"}
    )
    assert s["splits"] == {"val": 2}
    assert set(read_prepared("synthia", "full", tmp_path / "d")["val"]) == {"0000000", "0000002"}
    root, _ = raw["cityscapes"]
    (tmp_path / "c.txt").write_text("train_aachen_000000_000019\nval_frankfurt_000001_000020\n")
    s = preparation.prepare_one(
        "cityscapes",
        "full",
        tmp_path / "d",
        raw_dir=root,
        split_lists={"train": tmp_path / "c.txt"},
    )
    stored = read_prepared("cityscapes", "full", tmp_path / "d")["train"]
    assert set(stored) == {"aachen_000000_000019", "frankfurt_000001_000020"}


def test_cityscapes_split_lists_use_keys(raw, tmp_path):
    root, truth = raw["cityscapes"]
    key = sorted(truth)[0]
    (tmp_path / "l.txt").write_text(f"{key.split('_')[0]}/{key}_leftImg8bit.png\n")
    split_lists = {"train": tmp_path / "l.txt"}
    s = preparation.prepare_one(
        "cityscapes", "full", tmp_path, raw_dir=root, split_lists=split_lists
    )
    assert s["splits"] == {"train": 1}


def test_nthu_lists_look_in_their_own_folder(tmp_path):
    """NTHU stems recur in Images/Train and Images/Test: each list reads its own folder."""
    make_nthu(tmp_path / "raw", cities=("Rome",), n_train=2, n_test=1)
    city = tmp_path / "raw" / "Rome"
    # The Test folder gets an image (with its label) of the same stem as a Train image.
    Image.open(city / "Images" / "Test" / "pano_00000_test.jpg").save(
        city / "Images" / "Test" / "pano_00001_train.jpg", quality=95
    )
    labels_dir = city / "Labels" / "Test"
    (labels_dir / "pano_00001_train_eval.png").write_bytes(
        (labels_dir / "pano_00000_test_eval.png").read_bytes()
    )
    (tmp_path / "train.txt").write_text("pano_00000_train\npano_00001_train\n")
    (tmp_path / "test.txt").write_text("pano_00001_train\n")
    lists = {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"}
    s = preparation.prepare_one(
        "nthu-rome", "full", tmp_path / "d", raw_dir=tmp_path / "raw", split_lists=lists
    )
    assert s["splits"] == {"train": 2, "test": 1}
    stored = read_prepared("nthu-rome", "full", tmp_path / "d")
    assert (stored["train"]["pano_00001_train"][1] == 255).all()  # unlabelled Train image
    assert (stored["test"]["pano_00001_train"][1] != 255).any()  # the labelled Test one


def test_default_lists_are_the_originals_and_missing_files_are_counted(raw, tmp_path, capsys):
    """Without lists the original's own define the splits; the fixture holds 4 of them."""
    root, _ = raw["gta5"]
    args = ["gta5", str(root), "--data-dir", str(tmp_path / "d"), "--size", "full"]
    err = _error(capsys, args + ["--no-progress"])
    assert "gta5: 18781 listed pair(s) are not in" in err
    assert "train (original gta5/train.txt): 12399 of 12403 missing: '5' (" in err
    assert str(root / "labels" / "00005.png") in err  # its image is there, its label is not
    assert "and 12396 more" in err and "val (original gta5/val.txt): 6382 of 6382" in err
    _nothing_written(tmp_path / "d", "gta5", "full")
    assert prepare.main(args + ["--no-progress", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "pairs prepared: train: 4" in out
    assert (
        "splits from lists: train = original gta5/train.txt (12403 listed, 12399 missing on "
        "disk); val = original gta5/val.txt (6382 listed, 6382 missing on disk)"
    ) in out
    assert "listed but not on disk (--skip-bad) (18781)" in out and "(+18771 more)" in out


def test_shipped_lists_are_the_originals(tmp_path, capsys):
    """The lists ship inside the package with the original's MIT notice; their sizes."""
    folder = split_lists.lists_folder()
    notice = folder.joinpath("LICENSE").read_text()
    assert "MIT License" in notice and "Copyright (c) 2018 linhua" in notice

    def ids(rel):
        return [int(x) for x in folder.joinpath(*rel.split("/")).read_text().split()]

    gta = {name: ids(f"gta5/{name}.txt") for name in ("train", "val", "test", "all")}
    assert [len(gta[n]) for n in ("train", "val", "test", "all")] == [12403, 6382, 6181, 24966]
    assert sorted(gta["train"] + gta["val"] + gta["test"]) == list(range(1, 24967))
    assert sorted(ids("synthia/train.txt")) == list(range(9000))
    assert sorted(ids("synthia/val.txt")) == list(range(9000, 9400))
    cityscapes = datasets.get("cityscapes")
    city = split_lists.original_lists(cityscapes)
    assert {k: len(v.entries) for k, v in city.items()} == {"train": 2975, "val": 500}
    assert {split_lists.entry_key(cityscapes, e)[0] for e in city["val"].entries} == {"val"}
    for name in datasets.NTHU_CITIES:
        nthu = split_lists.original_lists(datasets.get(f"nthu-{name}"))
        assert {k: len(v.entries) for k, v in nthu.items()} == {"train": 3200, "test": 100}
    err = _error(
        capsys, ["gta5", str(tmp_path), "--data-dir", str(tmp_path), "--split-lists", "none",
                 "--split-list", "train=x.txt"],
    )  # fmt: skip
    assert "exclude each other" in err


# ---- bad inputs: one clear message naming the path, no traceback, nothing half-written ----

FOLDERS = ["--split-lists", "none"]  # fixtures hold a few files, not the original's lists


def _error(capsys, args):
    assert prepare.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _nothing_written(data_dir, dataset, config):
    path = Path(data_dir) / dataset / config
    leftovers = list(path.iterdir()) if path.exists() else []
    assert leftovers == [], leftovers


def test_missing_raw_folder(tmp_path, capsys):
    missing = tmp_path / "nope"
    err = _error(capsys, ["gta5", str(missing), "--data-dir", str(tmp_path / "d")])
    assert str(missing) in err and "images/00001.png" in err
    err = _error(capsys, ["cityscapes", str(tmp_path), "--data-dir", str(tmp_path / "d")])
    assert "leftImg8bit" in err and "gtFine" in err
    _nothing_written(tmp_path / "d", "gta5", "1280x720")


@pytest.mark.slow
def test_missing_raw_folder_cli_subprocess(tmp_path):
    """The real entry point: exit status 2, one message, no traceback."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "msjax.prepare", "synthia", str(tmp_path / "x")]
    proc = subprocess.run(
        cmd + ["--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(tmp_path / "x") in proc.stderr
    assert "GT/LABELS" in proc.stderr


def test_only_orphans_is_an_error(tmp_path, capsys):
    make_gta5(tmp_path / "raw", n=0, orphans=True)
    err = _error(
        capsys, ["gta5", str(tmp_path / "raw"), "--data-dir", str(tmp_path / "d"), *FOLDERS]
    )
    assert "no usable image/label pair" in err and "00001.png: image without label" in err


def test_truncated_image(tmp_path, capsys):
    make_gta5(tmp_path / "raw", n=3, orphans=False)
    bad = tmp_path / "raw" / "images" / "00002.png"
    truncate(bad)
    err = _error(
        capsys, ["gta5", str(tmp_path / "raw"), "--data-dir", str(tmp_path / "d"), *FOLDERS]
    )
    assert str(bad) in err and "truncated" in err
    _nothing_written(tmp_path / "d", "gta5", "1280x720")


def test_truncated_synthia_label(tmp_path, capsys):
    make_synthia(tmp_path / "raw", n=2)
    bad = tmp_path / "raw" / "GT" / "LABELS" / "0000001.png"
    truncate(bad, 0.6)
    args = ["synthia", str(tmp_path / "raw"), "--data-dir", str(tmp_path / "d"), *FOLDERS]
    err = _error(capsys, args + ["--size", "full"])
    assert str(bad) in err
    _nothing_written(tmp_path / "d", "synthia", "full")


def test_unreadable_label(tmp_path, capsys):
    make_cityscapes(tmp_path / "raw", {"train": [("ulm", 2)]})
    bad = next((tmp_path / "raw" / "gtFine").rglob("*_gtFine_labelIds.png"))
    bad.write_bytes(b"not a png at all")
    err = _error(
        capsys, ["cityscapes", str(tmp_path / "raw"), "--data-dir", str(tmp_path / "d"), *FOLDERS]
    )
    assert str(bad) in err
    _nothing_written(tmp_path / "d", "cityscapes", "1024x512")


def test_label_of_another_size_is_resized_not_dropped(tmp_path, capsys):
    """As the original: image and label are each resized to the stored size."""
    make_gta5(tmp_path / "raw", n=2, orphans=False)
    odd = tmp_path / "raw" / "labels" / "00002.png"
    Image.open(odd).resize((32, 16), Image.NEAREST).save(odd)
    args = ["gta5", str(tmp_path / "raw"), "--data-dir", str(tmp_path / "d"), *FOLDERS]
    assert prepare.main(args + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pairs prepared: train: 2" in out
    assert f"resized (nearest) as the original does (1): {odd}" in out
    stored = read_prepared("gta5", "1280x720", tmp_path / "d")["train"]
    ids = np.asarray(Image.open(odd))
    train = labels.id_to_train_id_lut("cityscapes")[ids].astype(np.uint8)
    want = np.asarray(Image.fromarray(train).resize((1280, 720), Image.NEAREST))
    np.testing.assert_array_equal(stored["00002"][1], want)
    # `full` keeps the image's size: the label is resized to it.
    assert prepare.main(args + ["--no-progress", "--size", "full"]) == 0
    stored = read_prepared("gta5", "full", tmp_path / "d")["train"]
    assert stored["00002"][1].shape == (IMAGE_H, IMAGE_W)


def test_unknown_names(tmp_path, capsys):
    err = _error(capsys, ["kitti", str(tmp_path), "--data-dir", str(tmp_path)])
    assert "kitti" in err and "gta5" in err and "synthetic-source" in err
    err = _error(capsys, ["gta5", str(tmp_path), "--data-dir", str(tmp_path), "--size", "640x360"])
    assert "640x360" in err and "valid: 1280x720, full" in err
    err = _error(capsys, ["paris", str(tmp_path), "--data-dir", str(tmp_path)])
    assert "nthu-rome" in err and "or a group (nthu, synthetic" in err
    with pytest.raises(DataError, match="valid: 1024x512, 1280x640, full"):
        builders.load_builder("cityscapes", "2048x1024", tmp_path)


def test_bad_split_list_argument(tmp_path, capsys):
    args = ["gta5", str(tmp_path), "--data-dir", str(tmp_path), "--split-list", "train.txt"]
    assert "SPLIT=PATH" in _error(capsys, args)


def test_prepared_at_another_resolution(raw, tmp_path):
    root, _ = raw["cityscapes"]
    preparation.prepare_one("cityscapes", "1280x640", tmp_path, raw_dir=root, split_lists="none")
    with pytest.raises(DataError, match=r"prepared sizes there: 1280x640\)"):
        builders.load_builder("cityscapes", "1024x512", tmp_path)
    # A prepared folder moved under another size's name is caught by its metadata.
    (tmp_path / "cityscapes" / "1280x640").rename(tmp_path / "cityscapes" / "1024x512")
    with pytest.raises(DataError, match="1280, 640.*not at \\(1024, 512\\)"):
        builders.load_builder("cityscapes", "1024x512", tmp_path)


def test_nthu_single_city_folder(raw, tmp_path, capsys):
    root, _ = raw["nthu"]
    s = preparation.prepare_one(
        "nthu-rome", "full", tmp_path, raw_dir=root / "Rome", split_lists="none"
    )
    assert s["splits"] == {"train": 2, "test": 2}
    err = _error(capsys, ["nthu-rio", str(root / "Rome"), "--data-dir", str(tmp_path)])
    assert "Rome" in err and "Rio" in err


def test_a_group_name_prepares_every_member(raw, tmp_path, capsys):
    """`prepare nthu RAW` prepares the four cities of one NTHU download."""
    root, _ = raw["nthu"]
    args = ["nthu", str(root), "--data-dir", str(tmp_path), "--split-lists", "none"]
    assert prepare.main([*args, "--no-progress"]) == 0
    for city in datasets.NTHU_CITIES:
        assert builders.prepared_sizes(f"nthu-{city}", tmp_path) == ["1024x512"]
    assert [d.name for d in datasets.members("synthetic-fog")] == [
        "synthetic-fog-1", "synthetic-fog-2", "synthetic-fog-3"
    ]  # fmt: skip
