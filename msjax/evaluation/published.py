"""The paper's published mIoU (Chen et al., ICCV 2019), to print beside msjax's numbers.

Numbers are the paper's (docs/original.md, "Published results"), in percent. They were
obtained with the original's protocol (image bicubic and label nearest at 1024x512), so they
compare directly only with `--protocol original`; the report says so next to them.
Whether they used the horizontal flip is not stated: the original's only evaluation command
passes `--flip True`, its evaluate.py defaults to no flip. Compare with both (`FLIP_NOTE`).

Each number belongs to a setting (its config in configs/), a target data set, a class count
and a method of msjax.methods. An evaluation sees the data set and the checkpoint's class
count (19 classes on Cityscapes = GTA5 -> Cityscapes; 16 = SYNTHIA -> Cityscapes; 13 on an
NTHU city = Cityscapes -> that city), and the method msjax recorded in the weights it
trained; `--method` picks another row.
"""

from __future__ import annotations

import dataclasses

FLIP_NOTE = (
    "the original's only evaluation command uses --flip True (the average of the image's and "
    "the flipped image's softmax); the original does not state whether the published numbers "
    "used it"
)


@dataclasses.dataclass(frozen=True)
class Published:
    """One published result.

    Attributes:
      setting: the config of its setting (configs/SETTING.py), e.g. 'gta2city'.
      target: the data set it is scored on (msjax.data.datasets), e.g. 'nthu-rome'.
      num_classes: the classes of its models.
      method: a method of msjax.methods.
      miou: mIoU in percent over the setting's classes (19, 16 or 13).
      miou13: SYNTHIA only: the 13-class mIoU* in percent.
      per_class: per-class IoU in percent in the setting's class order, when published.
    """

    setting: str
    target: str
    num_classes: int
    method: str
    miou: float
    miou13: float | None = None
    per_class: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        """E.g. 'MaxSquare + IW + Multi (paper, GTA5 -> Cityscapes)'."""
        from msjax import methods
        from msjax.data import datasets

        source = {"gta2city": "GTA5", "synthia2city": "SYNTHIA", "city2nthu": "Cityscapes"}
        route = f"{source.get(self.setting, self.setting)} -> {datasets.get(self.target).title}"
        return f"{methods.METHODS[self.method].title} (paper, {route})"


_GTA5_IW_MULTI_PER_CLASS = (
    89.4, 43.0, 82.1, 30.5, 21.3, 30.3, 34.7, 24.0, 85.3, 39.4,
    78.2, 63.0, 22.9, 84.6, 36.4, 43.0, 5.5, 34.7, 33.5,
)  # fmt: skip


def _cross_city(city: str, source: float, maxsquare: float, iw: float) -> list[Published]:
    target = f"nthu-{city}"
    return [Published("city2nthu", target, 13, m, v)
            for m, v in (("source", source), ("maxsquare", maxsquare), ("iw", iw))]  # fmt: skip


# Every published number, in the paper's tables' order (methods of msjax.methods).
PUBLISHED = [
    *(Published("gta2city", "cityscapes", 19, m, v) for m, v in (
        ("source", 36.9), ("minent", 42.2), ("maxsquare", 44.3), ("iw", 45.2))),
    Published("gta2city", "cityscapes", 19, "iw_multi", 46.4, per_class=_GTA5_IW_MULTI_PER_CLASS),
    *(Published("synthia2city", "cityscapes", 16, m, v, miou13=v13) for m, v, v13 in (
        ("source", 30.1, 34.3), ("minent", 38.0, 44.5), ("maxsquare", 39.3, 45.8),
        ("iw", 40.4, 46.9), ("iw_multi", 41.4, 48.2))),
    *_cross_city("rome", 51.0, 53.9, 54.5),
    *_cross_city("rio", 48.9, 52.0, 53.3),
    *_cross_city("tokyo", 47.8, 49.7, 50.5),
    *_cross_city("taipei", 46.3, 49.8, 50.6),
]  # fmt: skip
# The methods the paper has numbers for (evaluate's --method).
METHODS = tuple(dict.fromkeys(p.method for p in PUBLISHED))


def results(dataset: str, num_classes: int, setting: str | None = None) -> list[Published]:
    """Every published result scored on `dataset` with `num_classes` (of one setting, if given).

    Args:
      dataset: the evaluation data set (msjax.data.datasets), e.g. 'cityscapes'.
      num_classes: classes of the checkpoint.
      setting: a setting's config name; None: any (the checkpoint does not record it).

    Returns:
      A list, in the paper's order, empty when the paper has no result there.
    """
    return [
        p for p in PUBLISHED
        if p.target == dataset and p.num_classes == num_classes
        and setting in (None, p.setting)
    ]  # fmt: skip


def result(dataset: str, num_classes: int, method: str | None = None,
           setting: str | None = None) -> Published | None:  # fmt: skip
    """One published result: of `method`, or the paper's best there; None where there is none.

    Args:
      dataset, num_classes, setting: as in `results`.
      method: a method of msjax.methods; None for the paper's best result there.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    rows = results(dataset, num_classes, setting)
    if method is None:
        return max(rows, key=lambda r: r.miou) if rows else None
    return next((r for r in rows if r.method == method), None)
