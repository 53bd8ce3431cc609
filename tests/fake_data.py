"""Tiny fake raw data sets in the exact download layouts, for the data tests.

Each `make_*` writes a folder the real loaders read unchanged (docs/original.md, "Data sets
and label maps"):
Cityscapes nested city folders with `_gtFine_labelIds.png` (plus the `_color` and
`_instanceIds` files that must be ignored), GTA5 5-digit names with palette-mode labels,
SYNTHIA 16-bit three-channel label PNGs (id in channel 0, large instance values in the
others), NTHU `.jpg` images with `_eval.png` labels. Images are 64x32 so builds are quick.
Each helper returns {key: (image uint8 [H,W,3], raw label ids [H,W] or None)}.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 64, 32
# Raw Cityscapes ids drawn in fixtures: every id 0..33 (mapped and void) plus 40, which no
# table defines ("outside the map").
CITYSCAPES_IDS = np.arange(0, 34)
SYNTHIA_IDS = np.arange(0, 23)


def _rng(name: str, i: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), i])


def _image(rng) -> np.ndarray:
    # Smooth gradients plus noise: PNG and JPEG behave as on photographs, not on flat noise.
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 4, yy * 8, (xx + yy) * 2], -1)
    return np.clip(base + rng.integers(0, 40, (H, W, 3)), 0, 255).astype(np.uint8)


def _ids(rng, values, outside: int | None = None) -> np.ndarray:
    ids = rng.choice(values, size=(H, W)).astype(np.uint8)
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
        img.save(path)


def make_gta5(root: Path, n: int = 4, orphans: bool = True) -> dict:
    """GTA5: images/NNNNN.png and labels/NNNNN.png; one orphan of each kind if `orphans`."""
    root = Path(root)
    out = {}
    for i in range(1, n + 1):
        rng = _rng("gta5", i)
        key = f"{i:05d}"
        image, ids = _image(rng), _ids(rng, CITYSCAPES_IDS, outside=40 if i == 1 else None)
        _save(root / "images" / f"{key}.png", image)
        _save(root / "labels" / f"{key}.png", ids, mode="P")
        out[key] = (image, ids)
    if orphans:
        _save(root / "images" / f"{n + 1:05d}.png", _image(_rng("gta5", 99)))
        _save(root / "labels" / f"{n + 2:05d}.png", _ids(_rng("gta5", 98), CITYSCAPES_IDS), "P")
    return out


def make_synthia(root: Path, n: int = 3) -> dict:
    """SYNTHIA-RAND-CITYSCAPES: RGB/NNNNNNN.png and 16-bit 3-channel GT/LABELS/NNNNNNN.png."""
    root = Path(root)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        rng = _rng("synthia", i)
        key = f"{i:07d}"
        image = _image(rng)
        ids = rng.choice(SYNTHIA_IDS, size=(H, W)).astype(np.uint16)
        if i == 0:
            ids[0, :2] = 300  # a 16-bit value no table defines: must become ignore, counted
        # Channel 1 holds instance ids > 255: a reader that drops to 8 bits or reads the
        # wrong channel fails the pixel checks.
        label = np.stack([ids, rng.integers(256, 4000, (H, W)), np.zeros((H, W))], -1)
        _save(root / "RGB" / f"{key}.png", image)
        write_png16(root / "GT" / "LABELS" / f"{key}.png", label)
        out[key] = (image, ids)
    return out


def make_cityscapes(root: Path, per_split: dict | None = None) -> dict:
    """Cityscapes: leftImg8bit/SPLIT/CITY/..._leftImg8bit.png and gtFine/..._labelIds.png."""
    root = Path(root)
    per_split = per_split or {"train": [("aachen", 2), ("bochum", 1)], "val": [("frankfurt", 2)]}
    out = {}
    for split, cities in per_split.items():
        for city, count in cities:
            for j in range(count):
                key = f"{city}_{j:06d}_{19 + j:06d}"
                rng = _rng(key, 0)
                image, ids = _image(rng), _ids(rng, CITYSCAPES_IDS)
                _save(root / "leftImg8bit" / split / city / f"{key}_leftImg8bit.png", image)
                gt = root / "gtFine" / split / city
                _save(gt / f"{key}_gtFine_labelIds.png", ids)
                _save(gt / f"{key}_gtFine_color.png", image)  # must be ignored
                _save(gt / f"{key}_gtFine_instanceIds.png", ids)  # must be ignored
                out[key] = (image, ids)
    return out


def make_nthu(root: Path, cities=("Rome", "Rio", "Tokyo", "Taipei"), n_train=2, n_test=2) -> dict:
    """NTHU: CITY/Images/{Train,Test}/ID.jpg and CITY/Labels/Test/ID_eval.png."""
    root = Path(root)
    out = {}
    for city in cities:
        for split, n in (("Train", n_train), ("Test", n_test)):
            for i in range(n):
                key = f"pano_{i:05d}_{split.lower()}"
                rng = _rng(city + key, i)
                image = _image(rng)
                _save(root / city / "Images" / split / f"{key}.jpg", image)
                ids = None
                if split == "Test":
                    ids = _ids(rng, CITYSCAPES_IDS)
                    _save(root / city / "Labels" / "Test" / f"{key}_eval.png", ids)
                out[(city.lower(), key)] = (image, ids)
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cuts a file to a fraction of its bytes (an interrupted download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
