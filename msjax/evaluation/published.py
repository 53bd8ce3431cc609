"""The paper's published mIoU (Chen et al., ICCV 2019), to print beside msjax's numbers.

Numbers are the paper's (docs/original.md, "Published results"), in percent. They were
obtained with the original's protocol (image bicubic and label nearest at 1024x512), so they
compare directly only with `--protocol original`; the report says so next to them.
Whether they used the horizontal flip is not stated: the original's only evaluation command
passes `--flip True`, its evaluate.py defaults to no flip. Compare with both (`FLIP_NOTE`).

A setting is what the evaluation can see: the target data set and the class count of the
checkpoint (19 classes on Cityscapes = GTA5 -> Cityscapes; 16 = SYNTHIA -> Cityscapes;
13 on an NTHU city = Cityscapes -> that city). The training method is not recorded in a
checkpoint, so `--method` picks the row (by default the paper's best for the setting).
"""

from __future__ import annotations

import dataclasses

FLIP_NOTE = (
    "the original's only evaluation command uses --flip True (the average of the image's and "
    "the flipped image's softmax); the original does not state whether the published numbers "
    "used it"
)
# The methods (msjax.methods) the paper has numbers for, in its tables' order.
METHODS = ("source", "minent", "maxsquare", "iw", "iw_multi")


@dataclasses.dataclass(frozen=True)
class Published:
    """One published result.

    Attributes:
      setting: e.g. "GTA5 -> Cityscapes".
      method: a method of msjax.methods, one of METHODS.
      miou: mIoU in percent over the setting's classes (19, 16 or 13).
      miou13: SYNTHIA only: the 13-class mIoU* in percent.
      per_class: per-class IoU in percent in the setting's class order, when published.
    """

    setting: str
    method: str
    miou: float
    miou13: float | None = None
    per_class: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        """E.g. 'MaxSquare+IW+Multi (paper, GTA5 -> Cityscapes)'."""
        from msjax import methods

        return f"{methods.METHODS[self.method].title} (paper, {self.setting})"


_GTA5_IW_MULTI_PER_CLASS = (
    89.4, 43.0, 82.1, 30.5, 21.3, 30.3, 34.7, 24.0, 85.3, 39.4,
    78.2, 63.0, 22.9, 84.6, 36.4, 43.0, 5.5, 34.7, 33.5,
)  # fmt: skip

_GTA5 = {"source": 36.9, "minent": 42.2, "maxsquare": 44.3, "iw": 45.2, "iw_multi": 46.4}
_SYNTHIA = {"source": (30.1, 34.3), "minent": (38.0, 44.5), "maxsquare": (39.3, 45.8),
            "iw": (40.4, 46.9), "iw_multi": (41.4, 48.2)}  # fmt: skip
_CROSS_CITY = {  # source only / MaxSquare / MaxSquare+IW
    "rome": (51.0, 53.9, 54.5),
    "rio": (48.9, 52.0, 53.3),
    "tokyo": (47.8, 49.7, 50.5),
    "taipei": (46.3, 49.8, 50.6),
}


def _table(dataset: str, num_classes: int) -> dict[str, Published]:
    if dataset == "cityscapes" and num_classes == 19:
        setting = "GTA5 -> Cityscapes"
        return {
            m: Published(
                setting,
                m,
                v,
                per_class=_GTA5_IW_MULTI_PER_CLASS if m == "iw_multi" else None,
            )
            for m, v in _GTA5.items()
        }
    if dataset == "cityscapes" and num_classes == 16:
        setting = "SYNTHIA -> Cityscapes"
        return {m: Published(setting, m, v16, miou13=v13) for m, (v16, v13) in _SYNTHIA.items()}
    if dataset.startswith("nthu-") and num_classes == 13:
        city = dataset.split("-", 1)[1]
        if city in _CROSS_CITY:
            setting = f"Cityscapes -> {city.capitalize()}"
            values = _CROSS_CITY[city]
            names = ("source", "maxsquare", "iw")
            return {m: Published(setting, m, v) for m, v in zip(names, values, strict=True)}
    return {}


def results(dataset: str, num_classes: int) -> list[Published]:
    """Every published result of a setting, in METHODS order.

    Args:
      dataset: the evaluation data set (msjax.data.datasets): 'cityscapes' or 'nthu-CITY'.
      num_classes: classes of the checkpoint.

    Returns:
      A list, empty when the paper has no result for the setting.
    """
    table = _table(dataset, num_classes)
    return [table[m] for m in METHODS if m in table]


def result(dataset: str, num_classes: int, method: str | None = None) -> Published | None:
    """One published result of a setting.

    Args:
      dataset: 'cityscapes' or 'nthu-CITY'.
      num_classes: classes of the checkpoint.
      method: a key of METHODS; None for the paper's best result in that setting.

    Returns:
      The result, or None when the setting (or the method in it) has none.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    rows = results(dataset, num_classes)
    if not rows:
        return None
    if method is None:
        return max(rows, key=lambda r: r.miou)
    return next((r for r in rows if r.method == method), None)
