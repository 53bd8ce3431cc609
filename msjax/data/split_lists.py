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
`entry_key` turns one entry into the key of a raw pair (msjax.data.layouts matches them).
Which lists ship with a data set, and how its ids are written, is in its entry of
`msjax.data.datasets` (`Raw.lists`, `Raw.id_digits`, `Raw.split_in_ids`).
"""

import dataclasses
import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path

from msjax.errors import DataError

MODES = ("original", "none")  # --split-lists
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


def original_lists(dataset) -> dict[str, SplitList]:
    """The original's lists of a data set (its `Raw.lists`), split -> SplitList."""
    out = {}
    for split, rel in dataset.raw.lists.items():
        text = lists_folder().joinpath(*rel.split("/")).read_text()
        out[split] = SplitList(split, f"original {rel}", _entries(text))
    return out


def resolve(dataset, split_lists) -> dict[str, SplitList] | None:
    """The lists that define a data set's splits.

    Args:
      dataset: a read data set's entry (msjax.data.datasets.DataSet).
      split_lists: "original" (the shipped lists), "none" or None (no lists: the folders'
        own splits, every GTA5/SYNTHIA pair in train), or a mapping split -> list file (only
        those splits are prepared).

    Returns:
      split -> SplitList, or None for no lists.
    """
    if split_lists is None or split_lists == "none":
        return None
    if split_lists == "original":
        return original_lists(dataset)
    if isinstance(split_lists, Mapping) and split_lists:
        return {
            split: SplitList(split, str(path), read_split_list(path))
            for split, path in sorted(split_lists.items())
        }
    raise DataError(
        f"split lists {split_lists!r}: expected one of {list(MODES)} or split -> list file."
    )


def entry_key(dataset, entry: str) -> tuple[str | None, str]:
    """(folder split or None, pair key) of a list entry, in the original's format or a stem.

    Args:
      dataset: a read data set's entry (msjax.data.datasets.DataSet).
      entry: one entry as written.

    Returns:
      The folder split the entry names (Cityscapes `train_...` entries), else None; and the
      key of the raw pair (its file stem, e.g. `00001`, `aachen_000000_000019`).
    """
    name = _SUFFIX.sub("", entry.replace("\\", "/").rsplit("/", 1)[-1])
    digits = dataset.raw.id_digits
    if digits and name.isdigit():
        return None, f"{int(name):0{digits}d}"
    if dataset.raw.split_in_ids:
        match = _CITYSCAPES_ID.fullmatch(name)
        if match:
            return match.group(1), match.group(2)
    return None, name
