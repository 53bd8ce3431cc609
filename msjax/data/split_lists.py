"""Split lists: which raw pairs make up each prepared split.

msjax ships the original's lists (msjax/data/lists, MIT, see its LICENSE) and uses them by
default, so that `train` and `val` hold exactly the images the original trains and validates
on (docs/data.md). A list holds one entry per line, in either format:

- the original's ids: GTA5 and SYNTHIA unpadded integers (`1` is `00001.png` in GTA5 and
  `0000001.png` in SYNTHIA), Cityscapes `{split}_{city}_{seq}_{frame}`
  (`train_aachen_000000_000019`), NTHU file stems (`pano_00009_0_0`);
- file stems, file names or relative paths (`00001`, `00001.png`, `images/00001.png`,
  `frankfurt/frankfurt_000000_000294_leftImg8bit.png`); only the first word of a line counts.

Nothing here reads pixels: `resolve` turns the user's choice into `SplitList`s and
`entry_key` turns one entry into the key of a raw pair (msjax.data.datasets matches them).
"""

import dataclasses
import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path

from msjax.errors import DataError

# Split -> list file inside msjax/data/lists, per data set; NTHU's are per city.
ORIGINAL_LISTS = {
    "gta5": {"train": "gta5/train.txt", "val": "gta5/val.txt"},
    "synthia": {"train": "synthia/train.txt", "val": "synthia/val.txt"},
    "cityscapes": {"train": "cityscapes/train.txt", "val": "cityscapes/val.txt"},
    "nthu": {"train": "nthu/{City}/train.txt", "test": "nthu/{City}/test.txt"},
}
MODES = ("original", "none")  # --split-lists
# Digits of the file names the original formats its integer ids into.
_ID_DIGITS = {"gta5": 5, "synthia": 7}
_SUFFIX = re.compile(r"(_leftImg8bit|_gtFine_labelIds|_eval)?\.(png|jpe?g)$", re.IGNORECASE)
_CITYSCAPES_ID = re.compile(r"(train|val|test)_(.+)")


@dataclasses.dataclass(frozen=True)
class SplitList:
    """One split's list.

    Attributes:
      split: the prepared split it defines.
      name: how reports name it: "original gta5/train.txt" or the user's path.
      entries: its entries, as written, in file order (blank lines dropped).
    """

    split: str
    name: str
    entries: tuple[str, ...]


def lists_folder():
    """The shipped lists' folder (an importlib.resources Traversable)."""
    return importlib.resources.files("msjax.data") / "lists"


def _entries(text: str) -> tuple[str, ...]:
    return tuple(line.split()[0] for line in text.splitlines() if line.strip())


def read_split_list(path) -> tuple[str, ...]:
    """Reads a user's list file: its entries as written (first word of each non-blank line).

    Args:
      path: the list file.

    Returns:
      The entries in file order.

    Raises:
      DataError: the file does not exist.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"split list {path} does not exist or is not a file.")
    return _entries(path.read_text())


def original_lists(dataset: str, city: str | None = None) -> dict[str, SplitList]:
    """The original's lists of a data set (NTHU: of one city), split -> SplitList."""
    out = {}
    for split, rel in ORIGINAL_LISTS.get(dataset, {}).items():
        rel = rel.format(City=(city or "").capitalize())
        text = lists_folder().joinpath(*rel.split("/")).read_text()
        out[split] = SplitList(split, f"original {rel}", _entries(text))
    return out


def resolve(dataset: str, split_lists, city: str | None = None) -> dict[str, SplitList] | None:
    """The lists that define a data set's splits.

    Args:
      dataset: gta5, synthia, cityscapes or nthu.
      split_lists: "original" (the shipped lists), "none" or None (no lists: the folders'
        own splits, every GTA5/SYNTHIA pair in train), or a mapping split -> list file (only
        those splits are prepared).
      city: the NTHU city.

    Returns:
      split -> SplitList, or None for no lists.
    """
    if split_lists is None or split_lists == "none":
        return None
    if split_lists == "original":
        return original_lists(dataset, city)
    if isinstance(split_lists, Mapping) and split_lists:
        return {
            split: SplitList(split, str(path), read_split_list(path))
            for split, path in sorted(split_lists.items())
        }
    raise DataError(
        f"split lists {split_lists!r}: expected one of {list(MODES)} or split -> list file."
    )


def entry_key(dataset: str, entry: str) -> tuple[str | None, str]:
    """(folder split or None, pair key) of a list entry, in the original's format or a stem.

    Args:
      dataset: gta5, synthia, cityscapes or nthu.
      entry: one entry as written.

    Returns:
      The folder split the entry names (Cityscapes `train_...` entries), else None; and the
      key of the raw pair (its file stem, e.g. `00001`, `aachen_000000_000019`).
    """
    name = _SUFFIX.sub("", entry.replace("\\", "/").rsplit("/", 1)[-1])
    if dataset in _ID_DIGITS and name.isdigit():
        return None, f"{int(name):0{_ID_DIGITS[dataset]}d}"
    if dataset == "cityscapes":
        match = _CITYSCAPES_ID.fullmatch(name)
        if match:
            return match.group(1), match.group(2)
    return None, name
