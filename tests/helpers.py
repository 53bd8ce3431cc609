"""What several test modules share; a test module imports from here, never from another.

- Raw data sets: tiny fake downloads in the exact folder layouts the real loaders read
  (docs/original.md, "Data sets and label maps"): Cityscapes nested city folders with
  `_gtFine_labelIds.png` (plus the `_color` and `_instanceIds` files that must be ignored),
  GTA5 5-digit names with palette-mode labels, SYNTHIA 16-bit three-channel label PNGs (id in
  channel 0, large instance values in the others), NTHU `.jpg` images with `_eval.png`
  labels. Images are 64x32 so builds are quick; `size=(W, H)` draws them at another size and
  `make_full_size_raw` builds the downloads at their real sizes with the real file names of
  the original's split lists. Each `make_*` returns
  {key: (image uint8 [H,W,3], raw label ids [H,W] or None)}.
- Weights and train states: tiny random weights folders, a run's saved train state.
- Configs and runs: the shipped configs by name, the smoke config of the error tests, and
  the catalogue of docs/errors.md.
- Processes (slow tier only): the training command as a subprocess, its environment, and
  timing a command's exit.
- NumPy references of the metrics.
"""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from msjax import train, weights
from msjax.data import datasets, split_lists
from msjax.models import tiny_deeplabv2
from msjax.xla import merge_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- raw data sets -----------------------------------------------------------------------

IMAGE_W, IMAGE_H = 64, 32  # the size of every fake image (unless a builder is given `size`)
SIZE = (IMAGE_W, IMAGE_H)
# The downloads' own sizes (W, H): what `make_full_size_raw` draws.
REAL_SIZES = {"gta5": (1914, 1052), "synthia": (1280, 760), "cityscapes": (2048, 1024),
              "nthu": (2048, 1024)}  # fmt: skip
# Raw Cityscapes ids drawn in fixtures: every id 0..33 (mapped and void) plus 40, which no
# table defines ("outside the map").
CITYSCAPES_IDS = np.arange(0, 34)
SYNTHIA_IDS = np.arange(0, 23)


def _rng(name: str, i: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), i])


def _image(rng, size=SIZE) -> np.ndarray:
    # Smooth gradients plus noise: PNG and JPEG behave as on photographs, not on flat noise.
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * (256 / w), yy * (256 / h), xx * (128 / w) + yy * (64 / h)], -1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _ids(rng, values, outside: int | None = None, size=SIZE) -> np.ndarray:
    ids = rng.choice(values, size=(size[1], size[0])).astype(np.uint8)
    if outside is not None:
        ids[0, :3] = outside
    return ids


def write_png16(path: Path, array: np.ndarray) -> None:
    """Writes a 16-bit PNG (grey or RGB) with zlib alone: PIL cannot write 16-bit RGB."""
    array = np.asarray(array, dtype=">u2")
    if array.ndim == 2:
        array = array[..., None]
    h, w, c = array.shape
    colour_type = {1: 0, 3: 2}[c]
    raw = b"".join(b"\x00" + array[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    Path(path).write_bytes(png + chunk(b"IEND", b""))


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        # GTA5 labels are palette images whose indices are the ids; the palette is arbitrary.
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        img = Image.fromarray(array)
    if path.suffix == ".jpg":
        img.save(path, quality=95)
    else:
        img.save(path, compress_level=1)  # quick for the full-size fakes; PNG is lossless


def make_gta5(root: Path, n: int = 4, orphans: bool = True, size=SIZE, keys=None) -> dict:
    """GTA5: images/NNNNN.png and labels/NNNNN.png; one orphan of each kind if `orphans`.

    `keys`: the file stems (default 00001 ... n).
    """
    root = Path(root)
    out = {}
    for i, key in enumerate(keys or [f"{i:05d}" for i in range(1, n + 1)], start=1):
        rng = _rng("gta5", i)
        outside = 40 if i == 1 else None
        image, ids = _image(rng, size), _ids(rng, CITYSCAPES_IDS, outside=outside, size=size)
        _save(root / "images" / f"{key}.png", image)
        _save(root / "labels" / f"{key}.png", ids, mode="P")
        out[key] = (image, ids)
    if orphans:
        _save(root / "images" / f"{n + 1:05d}.png", _image(_rng("gta5", 99)))
        _save(root / "labels" / f"{n + 2:05d}.png", _ids(_rng("gta5", 98), CITYSCAPES_IDS), "P")
    return out


def make_synthia(root: Path, n: int = 3, size=SIZE, keys=None) -> dict:
    """SYNTHIA-RAND-CITYSCAPES: RGB/NNNNNNN.png and 16-bit 3-channel GT/LABELS/NNNNNNN.png.

    `keys`: the file stems (default 0000000 ... n - 1).
    """
    root = Path(root)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    out = {}
    w, h = size
    for i, key in enumerate(keys or [f"{i:07d}" for i in range(n)]):
        rng = _rng("synthia", i)
        image = _image(rng, size)
        ids = rng.choice(SYNTHIA_IDS, size=(h, w)).astype(np.uint16)
        if i == 0:
            ids[0, :2] = 300  # a 16-bit value no table defines: must become ignore, counted
        # Channel 1 holds instance ids > 255: a reader that drops to 8 bits or reads the
        # wrong channel fails the pixel checks.
        label = np.stack([ids, rng.integers(256, 4000, (h, w)), np.zeros((h, w))], -1)
        _save(root / "RGB" / f"{key}.png", image)
        write_png16(root / "GT" / "LABELS" / f"{key}.png", label)
        out[key] = (image, ids)
    return out


def make_cityscapes(root: Path, per_split: dict | None = None, size=SIZE, keys=None) -> dict:
    """Cityscapes: leftImg8bit/SPLIT/CITY/..._leftImg8bit.png and gtFine/..._labelIds.png.

    `per_split`: split -> [(city, count)], named CITY_00000j_0000(19+j); or `keys`: split ->
    [CITY_SEQ_FRAME].
    """
    root = Path(root)
    per_split = per_split or {"train": [("aachen", 2), ("bochum", 1)], "val": [("frankfurt", 2)]}
    keys = keys or {
        split: [f"{city}_{j:06d}_{19 + j:06d}" for city, count in cities for j in range(count)]
        for split, cities in per_split.items()
    }
    out = {}
    for split, names in keys.items():
        for key in names:
            city = key.split("_")[0]
            rng = _rng(key, 0)
            image, ids = _image(rng, size), _ids(rng, CITYSCAPES_IDS, size=size)
            _save(root / "leftImg8bit" / split / city / f"{key}_leftImg8bit.png", image)
            gt = root / "gtFine" / split / city
            _save(gt / f"{key}_gtFine_labelIds.png", ids)
            _save(gt / f"{key}_gtFine_color.png", image)  # must be ignored
            _save(gt / f"{key}_gtFine_instanceIds.png", ids)  # must be ignored
            out[key] = (image, ids)
    return out


def make_nthu(root: Path, cities=("Rome", "Rio", "Tokyo", "Taipei"), n_train=2, n_test=2,
              size=SIZE, keys=None) -> dict:  # fmt: skip
    """NTHU: CITY/Images/{Train,Test}/ID.jpg and CITY/Labels/Test/ID_eval.png.

    `keys`: (city, 'Train' or 'Test') -> the file stems (default pano_0000i_train / _test).
    """
    root = Path(root)
    out = {}
    for city in cities:
        for split, n in (("Train", n_train), ("Test", n_test)):
            names = [f"pano_{i:05d}_{split.lower()}" for i in range(n)]
            for i, key in enumerate((keys or {}).get((city, split), names)):
                rng = _rng(city + key, i)
                image = _image(rng, size)
                _save(root / city / "Images" / split / f"{key}.jpg", image)
                ids = None
                if split == "Test":
                    ids = _ids(rng, CITYSCAPES_IDS, size=size)
                    _save(root / city / "Labels" / "Test" / f"{key}_eval.png", ids)
                out[(city.lower(), key)] = (image, ids)
    return out


def listed_keys(dataset: str, split: str, n: int) -> list[str]:
    """The raw file stems of the first `n` entries of the original's list of a split."""
    entry = datasets.get(dataset)
    entries = split_lists.original_lists(entry)[split].entries[:n]
    return [split_lists.entry_key(entry, e)[1] for e in entries]


def make_full_size_raw(root: Path, which=("gta5", "synthia", "cityscapes", "nthu"), n=2) -> dict:
    """Raw downloads at their real sizes (REAL_SIZES), `n` pairs per split of each, named as
    the first entries of the original's lists; NTHU has Rome only. Returns {flag: folder}."""
    root = Path(root)
    folders = {flag: root / flag for flag in which}
    if "gta5" in which:
        keys = listed_keys("gta5", "train", n) + listed_keys("gta5", "val", n)
        make_gta5(folders["gta5"], orphans=False, size=REAL_SIZES["gta5"], keys=keys)
    if "synthia" in which:
        keys = listed_keys("synthia", "train", n) + listed_keys("synthia", "val", n)
        make_synthia(folders["synthia"], size=REAL_SIZES["synthia"], keys=keys)
    if "cityscapes" in which:
        keys = {s: listed_keys("cityscapes", s, n) for s in ("train", "val")}
        make_cityscapes(folders["cityscapes"], size=REAL_SIZES["cityscapes"], keys=keys)
    if "nthu" in which:
        keys = {("Rome", s.capitalize()): listed_keys("nthu-rome", s, n) for s in ("train", "test")}
        make_nthu(folders["nthu"], cities=("Rome",), size=REAL_SIZES["nthu"], keys=keys)
    return folders


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cuts a file to a fraction of its bytes (an interrupted download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


# ---- weights and train states ------------------------------------------------------------

# The weights are drawn with NumPy from the shapes `jax.eval_shape` gives (no RNG kernel is
# compiled per parameter shape: one compilation each, slow on CPU). Kernels use He scaling
# instead of the original's normal(0, 0.01), so that the logits vary from pixel to pixel and
# the predictions hold many classes: with the original's init a random network predicts one
# class everywhere and an evaluation test could not tell a correct confusion matrix from a
# transposed one.
BLOCKS, WIDTH = (1, 1, 1, 1), 8


def random_variables(num_classes: int, seed: int = 0):
    """(model, variables) of a tiny DeepLabV2 with He-scaled random weights."""
    model = tiny_deeplabv2(num_classes=num_classes, blocks=BLOCKS, width=WIDTH)
    return model, he_random_variables(model, seed)


def he_random_variables(model, seed: int = 0):
    """He-scaled random weights for `model`, BN statistics 0 and 1 (nothing compiled)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False)
    )
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        shape = leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(shape, np.float32)
        if name == "bias" and "conv2d_list" in str(path[-2].key):
            return rng.normal(0.0, 0.1, shape).astype(np.float32)
        return np.zeros(shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def save_random_checkpoint(out_dir, num_classes: int = 19, seed: int = 0):
    """Writes a weights folder in the msjax.weights format; returns (model, variables)."""
    model, variables = random_variables(num_classes, seed)
    metadata = {
        "source": "random (tests)",
        "source_sha256": "",
        "layout": "original",
        "num_classes": num_classes,
        "blocks": list(BLOCKS),
        "width": WIDTH,
        "stride_on": "1x1",
        "aspp_branches": 2,
        "input_normalization": "caffe_bgr",
        "heads": f"random (seed {seed})",
    }
    weights.save(str(out_dir), variables, metadata)
    return model, variables


def saved_train_state(workdir, step: int, like=None):
    """A run's saved TrainState at `step` as nested numpy arrays (params, BN, optimiser, step).

    `like` (a numpy tree of the same structure) is needed when the checkpoint was written
    by another topology, e.g. two processes: it is then restored onto one local device.
    """
    target = None
    if like is not None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like
        )
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
    return jax.tree.map(np.asarray, restored.state)


# ---- configs and runs --------------------------------------------------------------------


def load_config(name: str, arg: str | None = None):
    """configs/NAME.py's get_config(ARG), read from the file as the command line does."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def smoke(data_dir, steps=2, arg="iw,smoke"):
    """A short gta2city smoke config on `data_dir`, without TensorBoard or evaluation."""
    c = load_config("gta2city", arg)
    c.data_dir = data_dir
    c.train.steps = steps
    c.train.tensorboard = False
    c.eval.every_steps = 100
    return c


# case -> a fragment of its message, as docs/errors.md shows it (grouped as there, by the
# class of failure each case would be without its check). The tests of the cases live in
# test_errors.py, test_config_checks.py, test_cli_arguments.py, test_outputs.py, test_signals.py,
# test_datasets.py and test_convert.py; the docs row of each names its test.
CATALOGUE = {
    # -- Data loss: nothing saved before is deleted or damaged.
    "prepare --overwrite from a bad raw folder": "has mode RGB; expected a single-channel PNG",
    "prepare interrupted": "Interrupted (Ctrl-C). Outputs being written were discarded",
    "convert --force into a folder of other files": "holds files that are not a msjax weights",
    "export over a folder of other files": "not a msjax weights folder",
    "replacing a weights folder fails mid-write": "Could not write the weights folder",
    "swap killed between its two renames": "the old folder is put back",
    "results.json write fails": "Could not write",
    "workdir of other files": "but no config.json: it is not a msjax run",
    "foreign config.json": "is not the config of a msjax run",
    "evaluate disk full while writing the report": "No space left on device",
    "evaluate interrupted": "Interrupted (Ctrl-C)",
    "predict truncated image": "cannot read image",
    "predict two images with one output name": "would both be written as OUT/a_color.png",
    "second Ctrl-C": "Second Ctrl-C: exiting now.",
    # -- False success: a run that would do nothing (or not what was asked) is an error.
    "steps -1": "config.train.steps=-1: must be an integer >= 1",
    "steps 0": "config.train.steps=0: must be an integer >= 1",
    "lambda nan": "config.loss.lambda_target=nan: must be a finite number",
    "lambda inf": "config.loss.lambda_target=inf: must be a finite number",
    "lr nan": "config.optim.lr=nan: must be a finite number",
    "steps past iter_max": "config.train.steps=30 exceeds config.optim.iter_max=20",
    "workdir past the end": "beyond config.train.steps=2",
    "scale range reversed": "config.source.random_scale=(2.0, 0.5): must be None or (min, max)",
    "ignore index of a class": "config.loss.ignore_index=3: must be one of [255]",
    "convert zero classes": "--num-classes 0: must be one of [13, 16, 19]",
    "convert unusable class count": "--num-classes 7: must be one of [13, 16, 19]",
    "prepare zero examples": "--max-examples 0: must be an integer >= 1",
    "prepare zero workers": "--workers 0: must be an integer >= 1",
    "prepare synthetic with a raw dir": "is generated, not read: RAW_DIR",
    "predict alpha nan": "--alpha nan: the overlay colour weight must be in [0, 1]",
    "predict alpha out of range": "--alpha 2.0: the overlay colour weight must be in [0, 1]",
    "empty workdir": "--workdir is required: the folder of the run.",
    "prepare empty data dir": "--data-dir is empty: give the folder to write to.",
    "convert empty OUT_DIR": "OUT_DIR is empty: give the folder to write to.",
    "evaluate empty --out": "--out is empty: give the folder to write to.",
    "predict empty --out": "--out is empty: give the folder to write to.",
    "predict empty --images": "--images is empty",
    "evaluate empty --split": "--split is empty: name a split, or leave it out",
    "predict out inside the images folder": "wrote 6 files",
    "demo fields": "config.demo.source_steps=0: must be an integer >= 1",
    "demo field checked after a stage": "config.demo.adapt_lr=nan: must be a finite number",
    "Ctrl-C at start-up": "before the run started; nothing was written.",
    "Ctrl-C while the run is built": "before the first step: nothing new to save",
    "16-bit grey image": "the top 8 bits",
    "EXIF-rotated JPEG": "as a photo viewer shows it",
    # -- Tracebacks and unclear messages: one line naming the argument, field or file.
    "Ctrl-C during training": "Stopped by SIGINT (Ctrl-C): saved step",
    "prepare data dir that is a file": "is a file, not a folder.",
    "prepare data dir under a file": "cannot be created: ",
    "prepare negative workers": "--workers -2: must be an integer >= 1",
    "prepare negative examples": "--max-examples -1: must be an integer >= 1",
    "prepare raw dir that is a file": "is a file; give the raw download folder.",
    "convert OUT_DIR that is a file": "is a file, not a folder.",
    "convert OUT_DIR under a file": "cannot be created: ",
    "convert negative classes": "--num-classes -3: must be one of [13, 16, 19]",
    "convert negative seed": "--seed -1: must be an integer >= 0.",
    "convert empty .pth": "as a PyTorch checkpoint: the file is empty.",
    "convert garbage .pth": "as a PyTorch checkpoint: not a PyTorch file, or a damaged one",
    "convert .pth with Python objects": "it holds Python objects besides tensors",
    "evaluate --out that is a file": "is a file, not a folder.",
    "evaluate --out under a file": "cannot be created: ",
    "evaluate missing --data-dir": "does not exist: give the folder the data sets were prepared",
    "evaluate --data-dir that is a file": "is a file: give the folder the data sets were prepared",
    "evaluate a run folder": "it is a training run's folder; pass its weights, e.g.",
    "predict --out that is a file": "is a file, not a folder.",
    "predict a file that is no image": "(not an image, or damaged).",
    "predict a decompression bomb": "could be decompression bomb DOS attack.",
    "data dir that is a file": "is a file; give the folder the data sets were prepared into.",
    "optimizer rules misspelt": "must be 'faithful' or a list of [regex, group] pairs",
    "optimizer rule not a regex": "'(' is not a regular expression",
    "crop size in fractions": "must be None or (width, height) in whole pixels",
    "seed out of range": "config.seed=18446744073709551616: must be an integer in [0, 2**62)",
    "unknown data set": "config.source.dataset='kitti': must be one of",
    "unknown data config": "config.eval.size: synthetic-target: unknown size '999x1'",
    "empty split": "config.eval.split='': must be a non-empty name",
    "init checkpoint missing": "is not a converted weights folder: it does not exist",
    "init checkpoint a .pth": "it is a file (a .pth must be converted first)",
    "resume with another architecture": "cannot continue with this model, even with",
    "missing config file": "nope.py does not exist; give a config file",
    "distributed without a cluster": "config.distributed=True, but JAX found no multi-host job",
    "damaged stage summary": "the stage runs again",
    # -- Already one clear line from the library or the loaders.
    "missing data dir": "does not exist. Prepare the data sets there",
    "empty data dir": "is not prepared at size",
    "data dir prepared at another resolution": "(prepared sizes there: full)",
    "wrong class count": "config.init.checkpoint: num_classes=16 was requested but the weights",
    "checkpoint folder that is not Orbax": "is not a converted weights folder",
    "truncated checkpoint": "Cannot restore the train state of step",
    "unknown config argument": "unknown config argument",
    "misspelled override": "bad --config override or config file",
    "unwritable workdir": "is not writable",
    "workdir of another config": "holds a run of another config",
    "corrupted image in a raw folder": "truncated",
    "listed pair missing from a raw folder": "listed pair(s) are not in",
    ".pth of an unknown layout": "unknown layout",
    "zero or negative batch": "must be an integer >= 1",
    "batch not divisible by the device count": "the global batch must be a positive multiple",
    "fewer target than source examples": "both streams restart together",
    "disk full while saving": "No space left on device",
    "non-finite loss": "Non-finite",
    # -- One command per folder, nothing replaced that it did not write, bounded memory,
    #    the real cause in one line, values honoured, help (test_locks.py, test_ownership.py,
    #    test_bounds.py, test_causes.py, test_edge_cases.py, test_help.py).
    "help of the config commands": "--config.FIELD=VALUE",
    "help of the other commands": "usage: python -m msjax.",
    "two trainings on one workdir": "is in use by process",
    "evaluate, predict or prepare on a folder in use": "is in use by process",
    "stale lock of a dead process": "which is no longer running; taking it over.",
    "lock of another host": "msjax cannot check a process of another host",
    "SIGTERM to evaluate, predict, prepare or convert": "Terminated (SIGTERM). Outputs being",
    "demo on a training run's workdir": "python -m msjax.demo does not write into another",
    "train on another command's folder": "python -m msjax.train does not write into another",
    "evaluate of two checkpoints of one name": "eval/runs/a/final/synthetic-target_original",
    "evaluate --out of another checkpoint": "holds the output of another evaluate",
    "evaluate --out of another command": "is the workdir of a training run",
    "evaluate --out inside the checkpoint": "is inside the weights folder",
    "workdir inside a run's checkpoints": "which the training run",
    "train without --config": "--config is required: the experiment",
    "crop too large": "of at most 8,388,608 pixels (4096x2048)",
    "random scale too large": "scale factors with 0 < min <= max <= 4.0",
    "model too wide or too deep": "config.model.width=100000: must be an integer in [1, 256]",
    "validation batch too large": "config.eval.batch_size=100000: must be an integer in [1, 64]",
    "batch of too many pairs per device": "more than the 64 msjax trains on one",
    "evaluate a split that is not prepared": "has no split 'test'; prepared splits",
    "predict --out that is the images folder": "every image it names is under --out",
    "study report of no finished run": "holds no finished run of this study",
    "workdir that is a file": "is a file, not a folder.",
    "predict --out of another checkpoint": "holds the output of another predict",
    "predict over files it did not write": "which msjax did not write there",
    "predict an image over the size limit": "more than the 67.1 Mpx (8192x8192) msjax.predict",
    "predict a large photo": "a band of rows at a time",
    "predict --input-size too large": "more than the 8.4 Mpx (4096x2048) msjax feeds it",
    "evaluate --scales too large": "at scale 100",
    "evaluate --batch-size too large": "--batch-size 100000: must be in [1, 64]",
    "evaluate --batch-size over the split": "images; using 24.",
    "JAX_PLATFORMS of a platform this machine lacks": "JAX cannot start that platform",
    "disk full while preparing": "Could not write the prepared data set",
    "disk full in TensorStore while exporting": "Could not write the weights folder",
    "half-copied weights folder": "files of it are missing (an incomplete copy?)",
    "float64 compute dtype": "JAX computes in float32 unless its 64-bit mode is on",
    "weights with NaN or Inf read": "holds NaN or Inf values in",
    "weights with NaN or Inf written": "msjax does not write them",
    "checkpoints/ deleted by hand": "but no train state in",
    "renamed checkpoint step": "(was it renamed?)",
    "evaluate synthetic without --input-size": "at the set's own size",
    "hint for an unprepared synthetic size": "Run: python -m msjax.prepare synthetic-target --",
    "misspelt split name": "Did you mean 'train'?",
    "reproduce --source-weights of a .pth": "is a file: msjax reads converted weights folders",
    "reproduce --init with --source-weights": "--init and --source-weights exclude each other",
    "empty --workdir of demo, study or reproduce": "--workdir is required",
}


def tree(path) -> dict:
    """{relative path: bytes} of every file under `path` ({} if it does not exist)."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def refused(capsys, main, args, case) -> str:
    """Runs a command's main; asserts exit 2, one error line with the case's message."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
    assert CATALOGUE[case] in err, err
    return err


def evaluate_args(weights_dir, data_dir, out, *more):
    """msjax.evaluate's arguments for a smoke checkpoint on the synthetic data at 128x64."""
    return ["--checkpoint", weights_dir, "--dataset", "synthetic-target", "--input-size", "128x64",
            "--data-dir", data_dir, "--out", out, "--no-progress", *more]  # fmt: skip


def predict_args(weights_dir, images, out, *more):
    """msjax.predict's arguments at a network input height of 24."""
    return ["--checkpoint", weights_dir, "--images", images, "--out", out, "--input-size", "24",
            "--no-progress", *more]  # fmt: skip


def fails(capsys, config, workdir, case, **kwargs) -> str:
    """Runs like the CLI; asserts exit 2 and one clear message; returns it."""
    status = train.run(config, str(workdir), **kwargs)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    message = err[err.index("error: ") :]
    assert CATALOGUE[case] in message, message
    return message


def run_main(main, capsys, *args) -> tuple[int, str]:
    """`python -m msjax.COMMAND ARGS` in this process: (exit status, what it printed on stderr).

    `main` is the command's entry point (e.g. msjax.train.main), given the command line as
    sys.argv would hold it.
    """
    status = main([sys.modules[main.__module__].__file__, *map(str, args)])
    return status, capsys.readouterr().err


def committed_steps(workdir) -> list[int]:
    """The steps of a run's committed checkpoints, in order."""
    folder = os.path.join(workdir, "checkpoints")
    return (
        sorted(int(f) for f in os.listdir(folder) if f.isdigit()) if os.path.isdir(folder) else []
    )


def logged_steps(workdir) -> int:
    """The last step in metrics.jsonl (0 if none yet)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [0]
    for line in open(path):
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


# A short run of the training command: 10 steps that checkpoint every 2, given
# in-process (`short_run_config`) and as command-line overrides (`short_run_args`) alike.
SHORT_RUN_STEPS = 10
SHORT_RUN_OVERRIDES = {
    "train.steps": SHORT_RUN_STEPS,
    "train.checkpoint_every": 2,
    "train.log_every": 1,
    "train.tensorboard": False,
    "eval.every_steps": 100,
}


def short_run_config(data_dir, **changes):
    """The gta2city iw smoke config with SHORT_RUN_OVERRIDES (and `changes`) applied."""
    c = load_config("gta2city", "iw,smoke")
    c.data_dir = data_dir
    for key, value in {**SHORT_RUN_OVERRIDES, **changes}.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def short_run_args(data_dir, workdir):
    """The command-line arguments of `short_run_config(data_dir)`."""
    args = ["--config", "gta2city.py:iw,smoke", f"--workdir={workdir}"]
    args.append(f"--config.data_dir={data_dir}")
    args += [f"--config.{k}={v}" for k, v in SHORT_RUN_OVERRIDES.items()]
    return args


# ---- processes (slow tier only) ----------------------------------------------------------


def xla_flags_with(*flags: str) -> str:
    """The current XLA_FLAGS with `flags` added.

    A subprocess that forces several CPU devices keeps whatever XLA_FLAGS the whole suite
    runs with (for example the second instruction-set path of docs/reliability.md).
    """
    merged = os.environ.get("XLA_FLAGS", "")
    for flag in flags:
        merged = merge_flags(merged, flag)
    return merged


def with_devices(count: int) -> dict:
    """An environment for a subprocess with `count` forced CPU devices."""
    flag = f"--xla_force_host_platform_device_count={count}"
    return dict(os.environ, XLA_FLAGS=xla_flags_with(flag))


def run_cli(*args, env=None):
    """`python -m msjax.train ARGS` as a user runs it, in a subprocess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "msjax.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def start(module, *args):
    """`python -m MODULE ARGS` started (CPU and the compilation cache from conftest.py)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(process, workdir, step, checkpointed=False, timeout=240):
    """Waits until the run has logged `step` (and, if asked, committed a checkpoint)."""
    deadline = time.time() + timeout
    while logged_steps(workdir) < step or (checkpointed and not committed_steps(workdir)):
        assert process.poll() is None, "the run ended first: " + process.communicate()[1][-3000:]
        assert time.time() < deadline, "the run did not reach the step in time"
        time.sleep(0.01)


# Seconds a command may take between its last line of output and its exit. A normal exit
# (TensorFlow, JAX and Orbax unloading) takes a few seconds even on a loaded 2-core machine;
# the hang this guards against lasted minutes.
EXIT_GRACE_S = 30


def exit_delay(args: list[str], timeout: float = 600, tail: int = 5) -> tuple[int, float, str]:
    """Runs `python -m ARGS`; returns (status, seconds from its last output to its exit, and
    the last `tail` lines of its output).

    Both output streams are read line by line as they come, so the time of the last line is
    known to within the reader's latency.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    last = [time.monotonic()]
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            last[0] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{' '.join(args)} did not exit within {timeout} s:\n" + "".join(lines[-20:]))
    ended = time.monotonic()
    reader.join(timeout=10)
    return proc.returncode, ended - last[0], "".join(lines[-tail:])


def commands(inputs, i: int) -> dict[str, list[str]]:
    """Each command's arguments for repetition `i` (fresh output folders every time)."""
    root = inputs["root"]
    return {
        "train": ["msjax.train", "--config", "gta2city.py:iw,smoke", f"--workdir={root}/run{i}",
                  f"--config.data_dir={inputs['smoke_data']}", "--config.train.tensorboard=False"],
        "evaluate": ["msjax.evaluate", "--checkpoint", str(root / "ckpt"), "--dataset",
                     "cityscapes", "--data-dir", str(root / "data"), "--out",
                     str(root / f"eval{i}"), "--no-progress"],
        "predict": ["msjax.predict", "--checkpoint", str(root / "ckpt"), "--images",
                    str(root / "raw" / "leftImg8bit" / "val"), "--out", str(root / f"pred{i}"),
                    "--input-size", "64", "--no-progress"],
        "prepare": ["msjax.prepare", "cityscapes", str(root / "raw"), "--data-dir",
                    str(root / f"data{i}"), "--split-lists", "none", "--no-progress"],
    }  # fmt: skip


# ---- NumPy references of the metrics -----------------------------------------------------


def numpy_confusion(pred, label, num_classes, mask=None):
    """The original's `Eval.__generate_matrix`, plus the batch padding mask."""
    keep = (label >= 0) & (label < num_classes)
    if mask is not None:
        keep &= mask.reshape(mask.shape + (1,) * (label.ndim - 1))
    index = num_classes * label[keep].astype(int) + pred[keep]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def numpy_iou(m):
    """The original's per-class IoU (NumPy division: 0/0 -> NaN)."""
    m = m.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.diag(m) / (m.sum(1) + m.sum(0) - np.diag(m))
