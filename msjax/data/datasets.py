"""The data sets msjax knows, one entry each: the table every command reads.

A data set's name is its one spelling in every command and config: `python -m msjax.prepare
nthu-rome RAW`, `config.target.dataset = 'nthu-rome'`, `python -m msjax.evaluate --dataset
nthu-rome`. Sizes ('1024x512') are separate from names. An entry says where the data comes
from (a raw download folder read by `msjax.data.layouts`, or the generator of
`msjax.data.synthetic`), which sizes can be prepared, how its labels and split lists are
written, and how it is evaluated. Adding a data set is adding an entry here (and, for a new
download layout, its reader in `layouts`).

A group name (the part of several names before a '-': 'nthu', 'synthetic', 'synthetic-fog')
stands for all its members where a command takes several data sets (`msjax.prepare nthu`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

from msjax.data import layouts, synthetic
from msjax.errors import DataError

FULL = "full"  # the size name of the native resolution
NTHU_CITIES = ("rome", "rio", "tokyo", "taipei")
SYNTHETIC_SIZES = ("192x96", "128x64", "256x128")


@dataclasses.dataclass(frozen=True)
class Raw:
    """How a data set's download folder is read.

    Attributes:
      flag: the raw folder's argument of `msjax.reproduce` ('nthu' -> --nthu RAW); data sets
        read from one download (the NTHU cities) share it.
      layout: `fn(dataset, root, lists, skip_missing) -> layouts.Layout` (msjax.data.layouts).
      expected: the layout in words, for error messages.
      label_ids: the id table of its label PNGs ('cityscapes' or 'synthia', msjax.data.labels).
      lists: split -> the original's list shipped in msjax/data/lists (the default splits).
      id_digits: the original's lists write ids as unpadded integers formatted to this many
        digits (GTA5 5, SYNTHIA 7); None: entries are file stems.
      split_in_ids: list entries start with their folder split (Cityscapes `train_aachen_...`).
    """

    flag: str
    layout: Callable
    expected: str
    label_ids: str = "cityscapes"
    lists: Mapping[str, str] = dataclasses.field(default_factory=dict)
    id_digits: int | None = None
    split_in_ids: bool = False


@dataclasses.dataclass(frozen=True)
class DataSet:
    """One data set.

    Attributes:
      name: its one spelling.
      title: how reports print it.
      sizes: 'WxH' sizes it can be prepared at, the default (training) size first; read data
        sets also have FULL, the native size (labels of the full-resolution protocol).
      eval_split: the split scores are reported on ('val', or 'test' for the NTHU cities).
      class_counts: class counts of the models it can score.
      raw: how its download is read; None for generated data (`domain`).
      domain: the msjax.data.synthetic domain of a generated data set.
    """

    name: str
    title: str
    sizes: tuple[str, ...]
    eval_split: str = "val"
    class_counts: tuple[int, ...] = (19, 16, 13)
    raw: Raw | None = None
    domain: str | None = None

    @property
    def builder(self) -> str:
        """The prepared data's folder under DATA_DIR (a TFDS builder name)."""
        return self.name.replace("-", "_")

    @property
    def all_sizes(self) -> tuple[str, ...]:
        """`sizes`, and FULL for a read data set."""
        return self.sizes + ((FULL,) if self.raw else ())

    @property
    def generated(self) -> bool:
        return self.raw is None


def _nthu(city: str) -> DataSet:
    return DataSet(
        f"nthu-{city}",
        f"NTHU {city.capitalize()}",
        ("1024x512",),
        eval_split="test",
        class_counts=(13,),
        raw=Raw(
            "nthu",
            functools.partial(layouts.nthu, city=city, cities=NTHU_CITIES),
            "RAW_DIR/{Rome,Rio,Tokyo,Taipei}/Images/{Train,Test}/ID.jpg (or .png) and "
            "RAW_DIR/CITY/Labels/Test/ID_eval.png (Cityscapes ids); RAW_DIR may also be "
            "one city folder",
            lists={s: f"nthu/{city.capitalize()}/{s}.txt" for s in ("train", "test")},
        ),
    )


def _synthetic(domain: str) -> DataSet:
    titles = {"source": "synthetic source style", "target": 'synthetic "real" style'}
    return DataSet(
        f"synthetic-{domain}",
        titles.get(domain, f"synthetic {domain}"),
        SYNTHETIC_SIZES,
        domain=domain,
    )


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet(
            "gta5",
            "GTA5",
            ("1280x720",),
            raw=Raw(
                "gta5",
                functools.partial(layouts.flat, images="images", labels="labels"),
                "RAW_DIR/images/00001.png ... and RAW_DIR/labels/00001.png ... (5-digit "
                "names, labels in Cityscapes ids)",
                lists={"train": "gta5/train.txt", "val": "gta5/val.txt"},
                id_digits=5,
            ),
        ),
        DataSet(
            "synthia",
            "SYNTHIA",
            ("1280x760",),
            raw=Raw(
                "synthia",
                functools.partial(layouts.flat, images="RGB", labels="GT/LABELS"),
                "RAW_DIR/RGB/0000000.png ... and RAW_DIR/GT/LABELS/0000000.png ... "
                "(SYNTHIA-RAND-CITYSCAPES, 7-digit names, 16-bit labels whose first "
                "channel is the id)",
                label_ids="synthia",
                lists={"train": "synthia/train.txt", "val": "synthia/val.txt"},
                id_digits=7,
            ),
        ),
        DataSet(
            "cityscapes",
            "Cityscapes",
            ("1024x512", "1280x640"),
            raw=Raw(
                "cityscapes",
                layouts.cityscapes,
                "RAW_DIR/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png and "
                "RAW_DIR/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png",
                lists={"train": "cityscapes/train.txt", "val": "cityscapes/val.txt"},
                split_in_ids=True,
            ),
        ),
        *(_nthu(city) for city in NTHU_CITIES),
        *(_synthetic(domain) for domain in synthetic.DOMAINS),
    )
}


def get(name: str, what: str = "data set") -> DataSet:
    """The data set called `name`; DataError naming `what` and the valid names otherwise."""
    if name not in DATASETS:
        raise DataError(f"unknown {what} {name!r}; valid: {', '.join(DATASETS)}.")
    return DATASETS[name]


def check_size(dataset: DataSet, size: str, what: str = "size") -> None:
    """DataError listing the data set's sizes unless `size` is one of them."""
    if size not in dataset.all_sizes:
        raise DataError(
            f"{dataset.name}: unknown {what} {size!r}; valid: {', '.join(dataset.all_sizes)}."
        )


def members(name: str) -> list[DataSet]:
    """The data set `name`, or every member of the group `name` ('nthu' -> the four cities).

    Raises:
      DataError: neither a data set nor a group (the message lists both).
    """
    if name in DATASETS:
        return [DATASETS[name]]
    found = [d for d in DATASETS.values() if d.name.startswith(f"{name}-")]
    if not found:
        groups = sorted({n.rsplit("-", 1)[0] for n in DATASETS if "-" in n})
        raise DataError(
            f"unknown data set {name!r}; valid: {', '.join(DATASETS)}, or a group "
            f"({', '.join(groups)})."
        )
    return found


def raw_flags() -> list[str]:
    """The raw-folder arguments of msjax.reproduce, one per download ('nthu': every city)."""
    return list(dict.fromkeys(d.raw.flag for d in DATASETS.values() if d.raw))
