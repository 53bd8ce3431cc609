"""TFDS builders: a raw data set folder (TFDS `manual_dir`) -> a prepared, verified data set.

Each builder decodes every pair once, maps label ids to 19-class train ids (uint8, 255 =
ignore), resizes to its config's resolution (image bicubic, label nearest, as the original
does per step) and stores both as PNG. Workers decode and encode in threads (PIL and zlib
release the GIL), so TFDS's writer only copies bytes. Nothing is downloaded: the builders
never touch the network (no GCS lookup, no checksums, statistics skipped).

There is one builder per data set of `msjax.data.datasets`, made from its entry, and one
config per size it offers. Prepared data lives in `DATA_DIR/<builder>/<size>/1.0.0/`
(`DataSet.builder`: the name with '_' for '-'). Builders are not entered in TFDS's global
registry (TFDS ships its own `cityscapes`); use `builder_class` and `load_builder`.
"""

import collections
import concurrent.futures
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from msjax.data import datasets, hide_gpus_from_tensorflow, labels, layouts, synthetic
from msjax.errors import DataError

tf = hide_gpus_from_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402

# Never ask GCS for pre-computed dataset infos (it is off by default in this TFDS version; the
# flag is private, hence the guard).
if hasattr(tfds.core.utils.gcs_utils, "_is_gcs_disabled"):
    tfds.core.utils.gcs_utils._is_gcs_disabled = True

VERSION = "1.0.0"
_PNG_LEVEL = 3  # Build speed over a few % of disk: PNG decode speed barely depends on it.


class BadPairError(DataError):
    """One pair cannot be used: an unreadable or truncated file, or a label of many channels."""


@dataclasses.dataclass
class Stats:
    """What a build saw, for the closing summary of `python -m msjax.prepare`."""

    examples: dict = dataclasses.field(default_factory=lambda: collections.Counter())
    raw_sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    histogram: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
    outside_pixels: int = 0
    outside_files: int = 0
    bad: list = dataclasses.field(default_factory=list)  # (image path, message), --skip-bad
    resized_labels: list = dataclasses.field(default_factory=list)  # label paths


class Config(tfds.core.BuilderConfig):
    """A stored size: `name` is 'WxH' or 'full'; `size` is (width, height), or None (native)."""

    def __init__(self, *, size=None, **kwargs):
        super().__init__(version=VERSION, **kwargs)
        self.size = size


def _size(name: str) -> tuple[int, int] | None:
    """'1280x720' -> (1280, 720); 'full' -> None."""
    if name == datasets.FULL:
        return None
    w, h = name.split("x")
    return int(w), int(h)


def _open_image(path: Path) -> Image.Image:
    """Fully decodes an RGB image; unreadable or truncated files raise DataError."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadPairError(f"cannot read image {path}: {e} (unreadable or truncated file).") from e


def _read_label_ids(path: Path, table: str) -> np.ndarray:
    """Raw label ids [H, W]; SYNTHIA labels are 16-bit multi-channel PNGs (id in channel 0)."""
    if table == "synthia":
        data = path.read_bytes()
        try:
            # Bit depth sits at byte 24 of the IHDR chunk; PIL cannot read 16-bit RGB PNGs.
            dtype = tf.uint16 if len(data) > 24 and data[24] == 16 else tf.uint8
            ids = tf.io.decode_png(data, channels=0, dtype=dtype).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.OpError) as e:
            raise BadPairError(f"cannot read label {path}: unreadable or truncated PNG.") from e
        return ids[..., 0]
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadPairError(
                    f"label {path} has mode {img.mode}; expected a single-channel PNG of ids."
                )
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, BadPairError):
            raise
        raise BadPairError(f"cannot read label {path}: {e} (unreadable or truncated PNG).") from e


def split_lists_metadata(layout) -> dict | str | None:
    """What defined the splits, as stored in the prepared data set's metadata.

    Args:
      layout: the layouts.Layout being prepared, or None (synthetic sets, or a builder
        opened to read: TFDS then restores the stored value).

    Returns:
      split -> "LIST (N listed, M missing on disk)", "none" (the folders' own splits), or
      None.
    """
    if layout is None:
        return None
    if not layout.lists:
        return "none"
    return {
        split: f"{r.name} ({r.listed} listed, {len(r.missing)} missing on disk)"
        for split, r in sorted(layout.lists.items())
    }


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def process_pair(pair: layouts.Pair, table: str, size) -> tuple[dict, dict]:
    """Decodes, maps, resizes and encodes one raw pair.

    Args:
      pair: the raw files.
      table: label table name ("cityscapes" or "synthia").
      size: (width, height) to resize to, or None.

    Returns:
      (example dict for TFDS, per-example stats dict).
    """
    image = _open_image(pair.image)
    raw_size = image.size
    w, h = raw_size
    outside = 0
    if pair.label is None:
        train_ids = np.full((h, w), labels.IGNORE, np.uint8)
    else:
        ids = _read_label_ids(pair.label, table)
        # Values the table does not define become ignore; they are counted, not fatal.
        outside = int(np.count_nonzero(ids > labels.max_defined_id(table)))
        lut = labels.id_to_train_id_lut(table)
        train_ids = lut[np.minimum(ids, 255).astype(np.intp)]
    label_img = Image.fromarray(train_ids)
    # Image and label are each resized straight to the stored size, as the original resizes
    # each to the crop size; so a label of another size than its image is resized like any
    # other, not dropped. `full` configs resize such a label to its image's size.
    target = tuple(size) if size is not None else raw_size
    if image.size != target:
        image = image.resize(target, Image.BICUBIC)
    size_mismatch = label_img.size != raw_size
    if label_img.size != target:
        label_img = label_img.resize(target, Image.NEAREST)
    label = np.asarray(label_img)
    example = {"image": _png(np.asarray(image)), "label": _png(label), "id": pair.key}
    stats = {
        "raw_size": raw_size,
        "size_mismatch": size_mismatch,
        "outside": outside,
        "hist": np.bincount(label.ravel(), None, 256),
    }
    return example, stats


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: schema, threaded example generation, statistics."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First msjax release."}
    DATASET: datasets.DataSet  # the entry this builder prepares
    # Nothing is downloaded: no URL checksums to look up (TFDS would otherwise locate a
    # checksums file next to this module, which needs the optional importlib_resources).
    url_infos: dict = {}

    def __init__(
        self, *args, layout=None, progress=None, num_workers=None, skip_bad=False, **kwargs
    ):
        self.layout = layout  # before TFDS's __init__, which builds the info (_info) from it
        super().__init__(*args, **kwargs)
        # False: the first unreadable pair stops the build (nothing is written).
        # True: such pairs are skipped and listed in the summary (GTA5 ships a few).
        self.skip_bad = skip_bad
        self.progress = progress  # callable(iterable, total) -> iterable (a progress bar), or None
        self.num_workers = num_workers or min(16, os.cpu_count() or 1)
        self.stats = Stats()

    def _info(self):
        size = self.builder_config.size
        h, w = (size[1], size[0]) if size else (None, None)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
                    # 19-class train ids, 255 = ignore.
                    "label": tfds.features.Image(shape=(h, w, 1), encoding_format="png"),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(
                size=list(size) if size else None,
                label_space="cityscapes_train_ids_19",
                split_lists=split_lists_metadata(self.layout),
            ),
        )

    def _get_layout(self, dl_manager) -> layouts.Layout:
        if self.layout is None:
            self.layout = layouts.discover(self.DATASET, dl_manager.manual_dir)
        return self.layout

    def _split_generators(self, dl_manager):
        layout = self._get_layout(dl_manager)
        return {split: self._generate_examples(pairs) for split, pairs in layout.splits.items()}

    def _generate_examples(self, pairs):
        size = self.builder_config.size

        def work(pair):
            try:
                return process_pair(pair, self.DATASET.raw.label_ids, size)
            except BadPairError as e:
                if not self.skip_bad:
                    raise
                return None, str(e)

        kept = 0
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
            results = _ordered_map(pool, work, pairs, window=4 * self.num_workers)
            if self.progress is not None:
                results = self.progress(results, len(pairs))
            for pair, (example, stats) in zip(pairs, results, strict=True):
                if example is None:
                    self.stats.bad.append((pair.image, stats))
                    continue
                self.stats.raw_sizes[stats["raw_size"]] += 1
                if stats["size_mismatch"]:
                    self.stats.resized_labels.append(pair.label)
                self.stats.histogram += stats["hist"]
                self.stats.outside_pixels += stats["outside"]
                self.stats.outside_files += bool(stats["outside"])
                kept += 1
                yield pair.key, example
        if pairs and not kept:
            raise DataError(
                f"{self.DATASET.name}: every pair of a split was unreadable, e.g. "
                f"{self.stats.bad[0][1]}"
            )


def _ordered_map(pool, fn, items, window):
    """pool.map with a bounded number of results in flight (keeps memory flat)."""
    futures = collections.deque()
    items = iter(items)
    for item in items:
        futures.append(pool.submit(fn, item))
        if len(futures) >= window:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


SYNTHETIC_COUNTS = {"train": 400, "val": 100}


class _Synthetic(_Builder, skip_registration=True):
    """Procedural street scenes (msjax.data.synthetic); generated, nothing read or fetched."""

    def _split_generators(self, dl_manager):
        return {split: self._generate_synthetic(split, n) for split, n in SYNTHETIC_COUNTS.items()}

    def _generate_synthetic(self, split, n):
        w, h = self.builder_config.size
        domain = self.DATASET.domain
        indices = range(n)
        if self.progress is not None:
            indices = self.progress(indices, n)
        for i in indices:
            image, label = synthetic.render(domain, split, i, height=h, width=w)
            self.stats.raw_sizes[(w, h)] += 1
            self.stats.histogram += np.bincount(label.ravel(), None, 256)
            key = f"{domain}_{split}_{i:05d}"
            yield key, {"image": _png(image), "label": _png(label), "id": key}


def _make_builder(dataset: datasets.DataSet):
    """The TFDS builder class of one data set entry: a config per size."""
    base = _Synthetic if dataset.generated else _Builder
    configs = [Config(name=size, size=_size(size)) for size in dataset.all_sizes]
    attrs = dict(name=dataset.builder, DATASET=dataset, BUILDER_CONFIGS=configs,
                 __doc__=dataset.title, __module__=__name__)  # fmt: skip
    return type(base)(dataset.builder, (base,), attrs, skip_registration=True)


_BUILDERS = {name: _make_builder(d) for name, d in datasets.DATASETS.items()}


def builder_class(dataset: str):
    """The builder class of a data set name, or a DataError listing the valid names."""
    datasets.get(dataset)
    return _BUILDERS[dataset]


def prepared_sizes(dataset: str, data_dir) -> list[str]:
    """Sizes of a data set already prepared under `data_dir`."""
    entry = datasets.get(dataset)
    root = Path(data_dir) / entry.builder
    return [s for s in entry.all_sizes if (root / s / VERSION / "dataset_info.json").is_file()]


def prepared_path(dataset: str, size: str, data_dir) -> Path:
    """DATA_DIR/<builder>/<size>/<version>: where a data set's size is (or will be) prepared."""
    return Path(data_dir).expanduser() / datasets.get(dataset).builder / size / VERSION


def load_builder(dataset: str, size: str, data_dir):
    """Opens a prepared data set, checking that it was prepared at that size.

    Args:
      dataset: a data set name (msjax.data.datasets).
      size: one of its sizes, e.g. "1280x720" or "full".
      data_dir: the folder given to `python -m msjax.prepare --data-dir`.

    Returns:
      A TFDS builder whose `as_dataset` reads the prepared files.

    Raises:
      DataError: unknown names, data not prepared, or prepared at another resolution.
    """
    entry = datasets.get(dataset)
    datasets.check_size(entry, size)
    data_dir = Path(data_dir).expanduser()
    path = prepared_path(dataset, size, data_dir)
    if not (path / "dataset_info.json").is_file():
        found = prepared_sizes(dataset, data_dir) if data_dir.is_dir() else []
        raw = "" if entry.generated else " RAW_DIR"
        raise DataError(
            f"{dataset} is not prepared at size {size} in {path} (prepared sizes there: "
            f"{', '.join(found) or 'none'}). Run: python -m msjax.prepare {dataset}{raw} "
            f"--data-dir {data_dir} --size {size}"
        )
    builder = builder_class(dataset)(data_dir=os.fspath(data_dir), config=size)
    want = builder.builder_config.size
    stored = builder.info.metadata.get("size") if builder.info.metadata else None
    shape = builder.info.features["image"].shape
    got = (shape[1], shape[0]) if shape[0] is not None else None
    if (tuple(stored) if stored else None) != (tuple(want) if want else None) or got != (
        tuple(want) if want else None
    ):
        raise DataError(
            f"{path} holds {dataset} prepared at {stored or got or 'native size'}, not at "
            f"{want or 'native size'}; prepare it again with --size {size} --overwrite."
        )
    return builder
