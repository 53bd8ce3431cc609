"""The paper's rows, as `python -m msjax.reproduce` names them: `SETTING:ARG[,smoke]`.

SETTING is an experiment config (configs/SETTING.py) and ARG its argument, so a row names the
config of its final run: `gta2city:iw_multi` is `configs/gta2city.py:iw_multi`,
`city2nthu:rome,iw` is `configs/city2nthu.py:rome,iw`. A row's chain is the source model it
needs (`configlib.source_model`), then, for an adaptation row, the adaptation itself.
"""

from __future__ import annotations

import dataclasses

from msjax import configlib
from msjax.errors import ConfigError

SETTINGS = ("gta2city", "synthia2city", "city2nthu")
# Variant -> msjax.evaluation.published method (rows the paper has no number for are absent).
PUBLISHED_METHOD = {
    "source": "source_only",
    "minent": "minent",
    "maxsquare": "maxsquare",
    "iw": "maxsquare_iw",
    "iw_multi": "maxsquare_iw_multi",
}
EXAMPLES = "e.g. gta2city:iw_multi, synthia2city:maxsquare, city2nthu:rome or city2nthu:rio,iw"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's tables.

    Attributes:
      setting: 'gta2city', 'synthia2city' or 'city2nthu' (the config file's name).
      variant: the config variant of the row's run ('source', 'maxsquare', 'iw_multi', ...).
      city: the NTHU city of a cross-city row, else None.
      smoke: a smoke row (synthetic data, tiny model, two steps per run).
    """

    setting: str
    variant: str
    city: str | None
    smoke: bool

    def config_arg(self, variant: str) -> str:
        """The config argument of the run of `variant` in this row's chain."""
        words = [self.city, variant, "smoke" if self.smoke else None]
        if variant in configlib.SOURCE_VARIANTS:  # one source model for every city
            words[0] = None if self.setting == "city2nthu" else self.city
        return ",".join(w for w in words if w)

    @property
    def name(self) -> str:
        """The row as the command line takes it, e.g. 'city2nthu:rome,iw,smoke'."""
        return f"{self.setting}:{self.config_arg(self.variant)}"

    @property
    def slug(self) -> str:
        """A folder name, e.g. 'city2nthu_rome_iw_smoke'."""
        return self.name.replace(":", "_").replace(",", "_")

    @property
    def adapting(self) -> bool:
        """Whether the row's own run adapts (else it is a source-only row)."""
        return self.variant not in configlib.SOURCE_VARIANTS

    @property
    def source_variant(self) -> str:
        """The source-only variant of the chain's first run."""
        return configlib.source_model(self.variant)[0] if self.adapting else self.variant

    @property
    def start_from(self) -> str | None:
        """'best' or 'final': which checkpoint of the source run the adaptation starts from."""
        return configlib.source_model(self.variant)[1] if self.adapting else None

    @property
    def eval_dataset(self) -> str:
        """The paper's evaluation data set, as msjax.evaluate names it."""
        return f"nthu-{self.city}" if self.city else "cityscapes"

    @property
    def method(self) -> str | None:
        """The msjax.evaluation.published method of the row, None where the paper has none."""
        return PUBLISHED_METHOD.get(self.variant)


def parse_row(text: str) -> Row:
    """`'gta2city:iw_multi'` -> Row. Raises ConfigError listing what is valid."""
    setting, sep, arg = text.partition(":")
    if setting not in SETTINGS or not sep:
        raise ConfigError(
            f"row {text!r}: expected SETTING:ARG with SETTING one of {', '.join(SETTINGS)} "
            f"({EXAMPLES}); append ',smoke' for a CPU run on synthetic data."
        )
    module = configlib.load_module(setting)
    words = [w for w in arg.split(",") if w]
    smoke = "smoke" in words
    cities = [w for w in words if w in getattr(module, "CITIES", ())]
    rest = [w for w in words if w != "smoke" and w not in cities]
    variant = rest[0] if len(rest) == 1 else "maxsquare" if not rest else None
    wants_city = setting == "city2nthu"
    if variant not in module.VARIANTS or len(cities) != int(wants_city):
        where = f" and one city of {', '.join(module.CITIES)}" if wants_city else ""
        raise ConfigError(
            f"row {text!r}: {setting} takes one of {', '.join(module.VARIANTS)}{where} "
            f"(default maxsquare; {EXAMPLES})."
        )
    row = Row(setting, variant, cities[0] if cities else None, smoke)
    module.get_config(row.config_arg(variant))  # the config file's own checks
    return row
