"""The paper's rows, as `python -m msjax.reproduce` names them: `SETTING:ARG[,smoke]`.

SETTING is an experiment config (configs/SETTING.py, whose `SETTING` is a
`configlib.Setting`) and ARG its argument, so a row names the config of its final run:
`gta2city:iw_multi` is `configs/gta2city.py:iw_multi`, `city2nthu:rome,iw` is
`configs/city2nthu.py:rome,iw`. A row's chain is the source model its method starts from
(`Method.start_from`), then, for an adaptation row, the adaptation itself.
"""

from __future__ import annotations

import dataclasses
import os

from msjax import configlib, methods
from msjax.errors import ConfigError
from msjax.evaluation import published

EXAMPLES = "e.g. gta2city:iw_multi, synthia2city:maxsquare, city2nthu:rome or city2nthu:rio,iw"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's tables.

    Attributes:
      setting: the setting of configs/<setting.name>.py.
      method: the row's method.
      target: the target data set (one of the setting's).
      smoke: a smoke row (synthetic data, tiny model, two steps per run).
    """

    setting: configlib.Setting
    method: methods.Method
    target: str
    smoke: bool

    def config_arg(self, method: methods.Method, scored: bool = False) -> str:
        """The config argument of the run of `method` in this row's chain.

        One source model serves every target, so a source run's argument names none unless
        `scored` (the row's own name, which says where it is scored).
        """
        many = len(self.setting.targets) > 1
        target = self.target.rsplit("-", 1)[-1] if many and (method.adapting or scored) else None
        words = [target, method.name, "smoke" if self.smoke else None]
        return ",".join(w for w in words if w)

    @property
    def name(self) -> str:
        """The row as the command line takes it, e.g. 'city2nthu:rome,iw,smoke'."""
        return f"{self.setting.name}:{self.config_arg(self.method, scored=True)}"

    @property
    def slug(self) -> str:
        """A folder name, e.g. 'city2nthu_rome_iw_smoke'."""
        return self.name.replace(":", "_").replace(",", "_")

    @property
    def source_method(self) -> methods.Method:
        """The source-only method of the chain's first run."""
        if not self.method.adapting:
            return self.method
        return methods.METHODS[self.method.start_from[0]]

    @property
    def start_from(self) -> str | None:
        """'best' or 'final': which checkpoint of the source run the adaptation starts from."""
        return self.method.start_from[1] if self.method.adapting else None

    @property
    def published(self) -> bool:
        """Whether the paper has a number for the row."""
        n = self.setting.num_classes
        row = published.result(self.target, n, self.method.name, setting=self.setting.name)
        return row is not None


def settings() -> list[str]:
    """The config files of configs/ that define a paper setting (`SETTING`)."""
    names = sorted(f[:-3] for f in os.listdir(configlib.CONFIGS_DIR) if f.endswith(".py"))
    return [n for n in names if hasattr(configlib.load_module(n), "SETTING")]


def parse_row(text: str) -> Row:
    """`'gta2city:iw_multi'` -> Row. Raises ConfigError listing what is valid."""
    name, sep, arg = text.partition(":")
    known = settings()
    if name not in known or not sep:
        raise ConfigError(
            f"row {text!r}: expected SETTING:ARG with SETTING one of {', '.join(known)} "
            f"({EXAMPLES}); append ',smoke' for a CPU run on synthetic data."
        )
    setting = configlib.load_module(name).SETTING
    try:
        target, method, smoke = setting.parse_arg(arg)
    except ConfigError as e:
        raise ConfigError(f"row {text!r}: {e} ({EXAMPLES}).") from None
    words = arg.split(",")
    if len(setting.targets) > 1 and not any(w in setting.target_words() for w in words):
        raise ConfigError(
            f"row {text!r}: name the target it is scored on, one of "
            f"{', '.join(setting.target_words())} (e.g. {name}:{setting.target_words()[0]},"
            f"{method.name}); its source model is the same for every target."
        )
    row = Row(setting, method, target, smoke)
    configlib.load(name, row.config_arg(method))  # the config file's own checks
    return row
