"""The methods msjax trains, one entry each: the table every config, report and command reads.

A method is what a run does with the target domain: train on the source only, or adapt with
a target loss (optionally with multi-level guidance), starting from a source model. Its name
is the one spelling everywhere: the config argument (`gta2city.py:iw_multi`), `config.method`,
the study's and the demo's runs, results.json, reports and the paper's published table
(`msjax.evaluation.published`). Adding a method is adding an entry here (and its loss to
`msjax.losses`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from msjax import losses
from msjax.errors import ConfigError

SOURCE_FINAL = ("source", "final")


@dataclasses.dataclass(frozen=True)
class Method:
    """One method.

    Attributes:
      name: its one name.
      title: how tables print it.
      target_loss: the loss on the target's main-head logits (`fn(logits, **params)`), or
        None for a source-only method (no target images are read).
      loss_params: keyword of `target_loss` -> the config.loss field that gives its value.
      multi_level: the original's `--multi`: lambda_seg * CE(aux) on the source and, when
        adapting, the multi-level self-produced guidance on the target.
      lambda_scale: the method's lambda_target as a multiple of the setting's (0.1 in the
        paper): 0 for the control, 0.9 for IW + Multi (the paper's 0.09).
      start_from: (source method, 'best' or 'final'): the source model an adaptation starts
        from in the paper's protocol; None for source-only methods.
      target_size: the target's training and validation size, when the method changes it.
    """

    name: str
    title: str
    target_loss: Callable | None = None
    loss_params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    multi_level: bool = False
    lambda_scale: float = 1.0
    start_from: tuple[str, str] | None = None
    target_size: str | None = None

    @property
    def adapting(self) -> bool:
        """Whether the method reads target images (every method but the source-only ones)."""
        return self.target_loss is not None

    def lambda_target(self, setting_lambda: float) -> float:
        """config.loss.lambda_target of this method in a setting whose lambda is given."""
        return round(setting_lambda * self.lambda_scale, 12)  # 0.1 * 0.9 is 0.09, not 0.09..1

    def target_term(self, logits, loss_config: Mapping):
        """The target loss of `logits` with its parameters from `loss_config` (config.loss)."""
        params = {kw: loss_config[field] for kw, field in self.loss_params.items()}
        return self.target_loss(logits, **params)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("source", "Source only"),
        # Trains the aux head too: the source model IW + Multi starts from.
        Method("source_multi", "Source only + aux CE", multi_level=True),
        # The adaptation schedule with no target loss: only the BN statistics see the target.
        Method(
            "control",
            "control (lambda 0)",
            losses.max_square,
            lambda_scale=0.0,
            start_from=SOURCE_FINAL,
        ),  # fmt: skip
        Method("minent", "MinEnt", losses.entropy, start_from=SOURCE_FINAL),
        Method(
            "hard",
            "Hard pseudo-labels",
            losses.hard_pseudo_label,
            {"threshold": "threshold"},
            start_from=SOURCE_FINAL,
        ),  # fmt: skip
        Method("maxsquare", "MaxSquare", losses.max_square, start_from=SOURCE_FINAL),
        Method(
            "iw",
            "MaxSquare + IW",
            losses.iw_max_square,
            {"ratio": "iw_ratio"},
            start_from=SOURCE_FINAL,
        ),  # fmt: skip
        # The original's Multi run: lambda 0.09 for 0.1, trained and validated on Cityscapes
        # at 1280x640, from the best (source-val) multi-level source model.
        Method(
            "iw_multi",
            "MaxSquare + IW + Multi",
            losses.iw_max_square,
            {"ratio": "iw_ratio"},
            multi_level=True,
            lambda_scale=0.9,
            start_from=("source_multi", "best"),
            target_size="1280x640",
        ),  # fmt: skip
    )
}


def get(name: str, field: str = "config.method") -> Method:
    """The method called `name`; ConfigError naming `field` and the valid names otherwise."""
    if name not in METHODS:
        raise ConfigError(f"{field}={name!r}: valid methods are {', '.join(METHODS)}.")
    return METHODS[name]


def source_only() -> tuple[str, ...]:
    """Names of the source-only methods."""
    return tuple(name for name, m in METHODS.items() if not m.adapting)
