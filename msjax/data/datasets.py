"""Raw download layouts: which (image, label) pairs a user's raw folder holds, per split.

Nothing here reads pixels or imports TensorFlow: it walks folders, pairs images with labels,
applies optional split lists, and records every file it had to skip and why, so that
`python -m msjax.prepare` can report them. Layouts: docs/original.md, "Data sets and label
maps".
"""

import dataclasses
import re
from pathlib import Path

from msjax.errors import DataError

NTHU_CITIES = ("rome", "rio", "tokyo", "taipei")

EXPECTED_LAYOUT = {
    "gta5": "RAW_DIR/images/00001.png ... and RAW_DIR/labels/00001.png ... "
    "(5-digit names, labels in Cityscapes ids)",
    "synthia": "RAW_DIR/RGB/0000000.png ... and RAW_DIR/GT/LABELS/0000000.png ... "
    "(SYNTHIA-RAND-CITYSCAPES, 7-digit names, 16-bit labels whose first channel is the id)",
    "cityscapes": "RAW_DIR/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png and "
    "RAW_DIR/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png",
    "nthu": "RAW_DIR/{Rome,Rio,Tokyo,Taipei}/Images/{Train,Test}/ID.jpg (or .png) and "
    "RAW_DIR/CITY/Labels/Test/ID_eval.png (Cityscapes ids); RAW_DIR may also be one city folder",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One example of a raw data set.

    Attributes:
      key: unique name of the example (file stem without suffixes).
      image: path of the RGB image.
      label: path of the label image, or None for unlabelled target-domain images.
    """

    key: str
    image: Path
    label: Path | None


@dataclasses.dataclass
class Layout:
    """What a raw folder holds.

    Attributes:
      splits: split name -> pairs, sorted by key.
      skipped: (path, reason) for every file that could not be paired or was not listed.
    """

    splits: dict[str, list[Pair]]
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


def _missing(dataset: str, root: Path, what: Path) -> DataError:
    return DataError(
        f"{dataset}: raw folder {root} does not have the expected layout ({what} is missing). "
        f"Expected: {EXPECTED_LAYOUT[dataset]}."
    )


def _files(folder: Path, suffix_re: str) -> dict[str, Path]:
    """Maps the key (name with `suffix_re` removed) of each matching file in a folder."""
    pattern = re.compile(suffix_re + "$", re.IGNORECASE)
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and pattern.search(path.name):
            out[pattern.sub("", path.name)] = path
    return out


def _pair_up(images: dict, labels: dict, skipped: list) -> list[Pair]:
    """Pairs images with labels by key; records the orphans of either side."""
    for key in sorted(set(images) - set(labels)):
        skipped.append((images[key], "image without label"))
    for key in sorted(set(labels) - set(images)):
        skipped.append((labels[key], "label without image"))
    return [Pair(k, images[k], labels[k]) for k in sorted(set(images) & set(labels))]


def read_split_list(path: Path) -> list[str]:
    """Reads a split list as the original uses (one example per line).

    A line may be a bare id (`00001`), a file name (`00001.png`) or a relative path
    (`frankfurt/frankfurt_000000_000294_leftImg8bit.png`); only the key is kept.

    Args:
      path: the list file.

    Returns:
      The keys in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list {path} does not exist or is not a file.")
    keys = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            name = Path(line.split()[0]).name
            name = re.sub(r"(_leftImg8bit|_gtFine_labelIds|_eval)?\.(png|jpe?g)$", "", name)
            keys.append(name)
    return keys


def _apply_split_lists(
    pairs: list[Pair], split_lists: dict[str, Path], skipped: list
) -> dict[str, list[Pair]]:
    by_key = {p.key: p for p in pairs}
    out = {}
    listed = set()
    for split, list_path in sorted(split_lists.items()):
        chosen = []
        for key in read_split_list(list_path):
            if key in by_key:
                chosen.append(by_key[key])
                listed.add(key)
            else:
                skipped.append((Path(list_path), f"listed id {key!r} has no image/label pair"))
        out[split] = sorted(chosen, key=lambda p: p.key)
    for key in sorted(set(by_key) - listed):
        skipped.append((by_key[key].image, "not in any split list"))
    return out


def _layout(splits: dict[str, list[Pair]], split_lists, skipped: list) -> Layout:
    """The splits as found, or, with split lists, the listed pairs out of all found ones."""
    if split_lists:
        pooled = [p for pairs in splits.values() for p in pairs]
        return Layout(_apply_split_lists(pooled, split_lists, skipped), skipped)
    return Layout(splits, skipped)


def _flat_layout(dataset, root, image_dir, label_dir, image_re, label_re, split_lists):
    """GTA5 and SYNTHIA: two flat folders of images and labels with matching names."""
    for folder in (image_dir, label_dir):
        if not (root / folder).is_dir():
            raise _missing(dataset, root, root / folder)
    skipped: list = []
    pairs = _pair_up(
        _files(root / image_dir, image_re), _files(root / label_dir, label_re), skipped
    )
    return _layout({"train": pairs}, split_lists, skipped)


def _cityscapes_layout(root: Path, split_lists) -> Layout:
    skipped: list = []
    all_pairs: dict[str, list[Pair]] = {}
    for top in ("leftImg8bit", "gtFine"):
        if not (root / top).is_dir():
            raise _missing("cityscapes", root, root / top)
    for split in ("train", "val"):
        img_root, lab_root = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_root.is_dir():
            continue
        images, labels = {}, {}
        for city in sorted(p for p in img_root.iterdir() if p.is_dir()):
            images.update(_files(city, r"_leftImg8bit\.png"))
        if lab_root.is_dir():
            for city in sorted(p for p in lab_root.iterdir() if p.is_dir()):
                labels.update(_files(city, r"_gtFine_labelIds\.png"))
        all_pairs[split] = _pair_up(images, labels, skipped)
    if not all_pairs:
        raise _missing("cityscapes", root, root / "leftImg8bit" / "train")
    return _layout(all_pairs, split_lists, skipped)


def _nthu_city_dir(root: Path, city: str) -> Path:
    """Accepts the NTHU root (holding City folders) or one city's folder as RAW_DIR."""
    if (root / "Images").is_dir():
        if root.name.lower() in NTHU_CITIES and root.name.lower() != city:
            raise DataError(
                f"nthu: {root} looks like the {root.name} folder but config asks for {city}; "
                f"pass the NTHU root or the {city.capitalize()} folder."
            )
        return root
    for child in root.iterdir() if root.is_dir() else []:
        if child.is_dir() and child.name.lower() == city:
            return child
    raise _missing("nthu", root, root / city.capitalize())


def _nthu_layout(root: Path, city: str, split_lists) -> Layout:
    city_dir = _nthu_city_dir(root, city)
    skipped: list = []
    splits = {}
    image_re = r"\.(png|jpe?g)"
    train_dir = city_dir / "Images" / "Train"
    test_dir, label_dir = city_dir / "Images" / "Test", city_dir / "Labels" / "Test"
    if train_dir.is_dir():
        # Target-domain training images carry no labels: they are stored with an all-ignore
        # label so that every prepared data set has the same schema.
        splits["train"] = [Pair(k, p, None) for k, p in sorted(_files(train_dir, image_re).items())]
    if test_dir.is_dir():
        if not label_dir.is_dir():
            raise _missing("nthu", root, label_dir)
        splits["test"] = _pair_up(
            _files(test_dir, image_re), _files(label_dir, r"_eval\.png"), skipped
        )
    if not splits:
        raise _missing("nthu", root, city_dir / "Images" / "Train")
    return _layout(splits, split_lists, skipped)


def discover(dataset: str, raw_dir, city: str | None = None, split_lists=None) -> Layout:
    """Finds the (image, label) pairs of a raw data set folder.

    Args:
      dataset: "gta5", "synthia", "cityscapes" or "nthu".
      raw_dir: the user's raw folder, in the data set's download layout.
      city: NTHU city (rome, rio, tokyo, taipei); ignored by the other data sets.
      split_lists: optional mapping split name -> list file; when given, exactly the listed
        examples go to each split and the unlisted ones are reported as skipped.

    Returns:
      A Layout with at least one non-empty split.

    Raises:
      DataError: the folder is missing, lacks the layout, or holds no usable pair.
    """
    if dataset not in EXPECTED_LAYOUT:
        raise DataError(f"unknown data set {dataset!r}; valid: {sorted(EXPECTED_LAYOUT)}.")
    root = Path(raw_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{dataset}: raw folder {root} does not exist. Expected: {EXPECTED_LAYOUT[dataset]}."
        )
    split_lists = {k: Path(v) for k, v in (split_lists or {}).items()}
    if dataset == "gta5":
        layout = _flat_layout(dataset, root, "images", "labels", r"\.png", r"\.png", split_lists)
    elif dataset == "synthia":
        layout = _flat_layout(
            dataset, root, "RGB", Path("GT") / "LABELS", r"\.png", r"\.png", split_lists
        )
    elif dataset == "cityscapes":
        layout = _cityscapes_layout(root, split_lists)
    else:
        if city not in NTHU_CITIES:
            raise DataError(f"nthu: unknown city {city!r}; valid: {list(NTHU_CITIES)}.")
        layout = _nthu_layout(root, city, split_lists)
    layout.splits = {k: v for k, v in layout.splits.items() if v}
    if not layout.splits:
        reasons = "; ".join(f"{p}: {why}" for p, why in layout.skipped[:5])
        raise DataError(
            f"{dataset}: no usable image/label pair in {root} "
            f"({len(layout.skipped)} files skipped{': ' + reasons if reasons else ''}). "
            f"Expected: {EXPECTED_LAYOUT[dataset]}."
        )
    return layout
