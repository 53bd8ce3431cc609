"""Raw download layouts: which (image, label) pairs a user's raw folder holds, per split.

Nothing here reads pixels or imports TensorFlow: it walks folders, pairs images with labels,
applies split lists (msjax.data.split_lists), and records every file it had to skip and why,
so that `python -m msjax.prepare` can report them. Each reader (`flat`, `cityscapes`, `nthu`)
takes the data set's entry of `msjax.data.datasets` (its name, expected layout and list
format); `discover` is the entry point. Layouts: docs/data.md.
"""

import dataclasses
import re
from pathlib import Path

from msjax.data.split_lists import entry_key, resolve
from msjax.errors import DataError

MAX_NAMED = 3  # missing listed files an error message names (then a count)


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
      lists: split -> how its list matched; empty when the folders define the splits.
    """

    splits: dict[str, list[Pair]]
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    lists: dict[str, "ListReport"] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ListReport:
    """How one split list matched a raw folder.

    Attributes:
      name: the list, as reports name it ("original gta5/train.txt" or the user's path).
      listed: entries in the list.
      missing: (entry, expected file) of each entry without an image/label pair on disk.
    """

    name: str
    listed: int
    missing: list[tuple[str, Path]]


def _missing(dataset, root: Path, what: Path) -> DataError:
    return DataError(
        f"{dataset.name}: raw folder {root} does not have the expected layout ({what} is "
        f"missing). Expected: {dataset.raw.expected}."
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


def _absent(paths) -> Path:
    """The first of a pair's expected files that does not exist (else the image)."""
    paths = [p for p in paths if p is not None]
    return next((p for p in paths if not p.exists()), paths[0])


def _missing_error(dataset, root: Path, reports: dict) -> DataError:
    total = sum(len(r.missing) for r in reports.values())
    parts = []
    for split, r in reports.items():
        if r.missing:
            shown = ", ".join(f"{entry!r} ({path})" for entry, path in r.missing[:MAX_NAMED])
            more = f" and {len(r.missing) - MAX_NAMED} more" if len(r.missing) > MAX_NAMED else ""
            parts.append(
                f"{split} ({r.name}): {len(r.missing)} of {r.listed} missing: {shown}{more}"
            )
    return DataError(
        f"{dataset.name}: {total} listed pair(s) are not in {root}; " + "; ".join(parts) + ". Pass "
        "--skip-bad to prepare the listed pairs that are there (the summary lists the missing "
        "ones), --split-list SPLIT=PATH to give your own lists, or --split-lists none to use "
        "the folders' own splits."
    )


def _apply_split_lists(dataset, pools, lists, skipped, expect) -> tuple[dict, dict]:
    """Each split's listed pairs; (splits, split -> ListReport). Unlisted pairs are skipped.

    An entry that names its folder split (Cityscapes `val_...`) is looked up there; others in
    the folder split of the list's name first (NTHU stems recur in Train and Test), then in
    any.
    """
    by_folder = {name: {p.key: p for p in pairs} for name, pairs in pools.items()}
    splits, reports, used = {}, {}, set()
    for split, lst in lists.items():
        chosen, missing, seen = [], [], set()
        for entry in lst.entries:
            folder, key = entry_key(dataset, entry)
            if key in seen:
                skipped.append((Path(lst.name), f"listed twice, kept once: {entry!r}"))
                continue
            seen.add(key)
            order = [folder] if folder else [split, *by_folder]
            pair = next((by_folder[f][key] for f in order if key in by_folder.get(f, {})), None)
            if pair is None:
                missing.append((entry, _absent(expect(folder or split, key))))
            else:
                chosen.append(pair)
                used.add(id(pair))
        splits[split] = sorted(chosen, key=lambda p: p.key)
        reports[split] = ListReport(lst.name, len(lst.entries), missing)
    for pairs in pools.values():
        skipped.extend((p.image, "not in any split list") for p in pairs if id(p) not in used)
    return splits, reports


def _layout(dataset, root, pools, lists, skipped, expect, skip_missing) -> Layout:
    """The splits as the folders give them, or, with split lists, the listed pairs.

    Args:
      pools: folder split -> pairs found there.
      lists: split -> SplitList, or None.
      expect: (folder split, key) -> the pair's expected (image, label or None) paths.
      skip_missing: False: a listed pair missing on disk is an error naming it; True: it is
        recorded in `skipped`.
    """
    if lists is None:
        return Layout(pools, skipped)
    splits, reports = _apply_split_lists(dataset, pools, lists, skipped, expect)
    if any(r.missing for r in reports.values()):
        if not skip_missing:
            raise _missing_error(dataset, root, reports)
        for r in reports.values():
            skipped.extend((path, "listed but not on disk (--skip-bad)") for _, path in r.missing)
    return Layout(splits, skipped, reports)


def flat(dataset, root: Path, lists, skip_missing, *, images: str, labels: str) -> Layout:
    """GTA5 and SYNTHIA: two flat folders of PNG images and labels with matching names."""
    image_dir, label_dir = Path(images), Path(labels)
    for folder in (image_dir, label_dir):
        if not (root / folder).is_dir():
            raise _missing(dataset, root, root / folder)
    skipped: list = []
    pairs = _pair_up(
        _files(root / image_dir, r"\.png"), _files(root / label_dir, r"\.png"), skipped
    )

    def expect(_, key):
        return root / image_dir / f"{key}.png", root / label_dir / f"{key}.png"

    return _layout(dataset, root, {"train": pairs}, lists, skipped, expect, skip_missing)


def cityscapes(dataset, root: Path, lists, skip_missing) -> Layout:
    """Cityscapes: leftImg8bit/SPLIT/CITY/*_leftImg8bit.png, gtFine/.../*_gtFine_labelIds.png."""
    skipped: list = []
    all_pairs: dict[str, list[Pair]] = {}
    for top in ("leftImg8bit", "gtFine"):
        if not (root / top).is_dir():
            raise _missing(dataset, root, root / top)
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
        raise _missing(dataset, root, root / "leftImg8bit" / "train")

    def expect(split, key):
        city = key.split("_")[0]
        return (
            root / "leftImg8bit" / split / city / f"{key}_leftImg8bit.png",
            root / "gtFine" / split / city / f"{key}_gtFine_labelIds.png",
        )

    return _layout(dataset, root, all_pairs, lists, skipped, expect, skip_missing)


def _nthu_city_dir(dataset, root: Path, city: str, cities) -> Path:
    """Accepts the NTHU root (holding City folders) or one city's folder as RAW_DIR."""
    if (root / "Images").is_dir():
        if root.name.lower() in cities and root.name.lower() != city:
            raise DataError(
                f"{dataset.name}: {root} looks like the folder of one city ({root.name}), not "
                f"of {city.capitalize()}; pass the NTHU root or the {city.capitalize()} folder."
            )
        return root
    for child in root.iterdir() if root.is_dir() else []:
        if child.is_dir() and child.name.lower() == city:
            return child
    raise _missing(dataset, root, root / city.capitalize())


def nthu(dataset, root: Path, lists, skip_missing, *, city: str, cities) -> Layout:
    """One NTHU city: CITY/Images/{Train,Test}/ID.jpg, CITY/Labels/Test/ID_eval.png.

    `cities`: every city's name, to tell the folder of another city from the NTHU root.
    """
    city_dir = _nthu_city_dir(dataset, root, city, cities)
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
            raise _missing(dataset, root, label_dir)
        splits["test"] = _pair_up(
            _files(test_dir, image_re), _files(label_dir, r"_eval\.png"), skipped
        )
    if not splits:
        raise _missing(dataset, root, city_dir / "Images" / "Train")

    def expect(split, key):
        image = city_dir / "Images" / split.capitalize() / f"{key}.jpg"
        return image, (label_dir / f"{key}_eval.png" if split == "test" else None)

    return _layout(dataset, root, splits, lists, skipped, expect, skip_missing)


def discover(dataset, raw_dir, split_lists=None, skip_missing=False) -> Layout:
    """Finds the (image, label) pairs of a raw data set folder.

    Args:
      dataset: a read data set's entry (msjax.data.datasets.DataSet).
      raw_dir: the user's raw folder, in the data set's download layout.
      split_lists: None or "none" (the folders' own splits: Cityscapes train/val, NTHU
        train/test, every GTA5/SYNTHIA pair in train), "original" (the original's lists,
        shipped with msjax), or a mapping split -> list file. With lists, exactly the listed
        pairs go to each split and the unlisted ones are reported as skipped.
      skip_missing: with lists, record listed pairs that are not on disk in `skipped`
        instead of raising (`--skip-bad`).

    Returns:
      A Layout with at least one non-empty split.

    Raises:
      DataError: the folder is missing, lacks the layout, or holds no usable pair; or a
        listed pair is missing and not `skip_missing`.
    """
    root = Path(raw_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{dataset.name}: raw folder {root} does not exist. Expected: {dataset.raw.expected}."
        )
    lists = resolve(dataset, split_lists)
    layout = dataset.raw.layout(dataset, root, lists, skip_missing)
    layout.splits = {k: v for k, v in layout.splits.items() if v}
    if not layout.splits:
        reasons = "; ".join(f"{p}: {why}" for p, why in layout.skipped[:5])
        raise DataError(
            f"{dataset.name}: no usable image/label pair in {root} "
            f"({len(layout.skipped)} files skipped{': ' + reasons if reasons else ''}). "
            f"Expected: {dataset.raw.expected}."
        )
    return layout
