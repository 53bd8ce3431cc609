r"""Cityscapes -> NTHU cross-city (Rome, Rio, Tokyo, Taipei), 13 classes.

    python -m msjax.train --config configs/city2nthu.py:CITY[,VARIANT] --workdir runs/CITY \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS

Published 13-class mIoU on each city's 100 test images (source-only / maxsquare / iw):
  rome 51.0 / 53.9 / 54.5    rio 48.9 / 52.0 / 53.3
  tokyo 47.8 / 49.7 / 50.5   taipei 46.3 / 49.8 / 50.6
VARIANT: maxsquare (default), iw or source. 10 epochs of 2,975 steps, lambda 0.1, crops
1024x512, multi-level threshold 0.98. The source-only (Cityscapes) schedule of the original is
not documented; 'source' keeps the same 10 epochs. Append ',smoke' for a two-step CPU run on
synthetic data.
"""

from msjax import configlib
from msjax.errors import ConfigError

CITIES = ("rome", "rio", "tokyo", "taipei")
VARIANTS = ("maxsquare", "iw", "source")


def get_config(arg=None):
    words = [w for w in (arg or "").split(",") if w]
    cities = [w for w in words if w in CITIES]
    if len(cities) != 1:
        raise ConfigError(
            f"city2nthu needs exactly one city in its argument, got {arg!r}; valid cities: "
            f"{', '.join(CITIES)} (e.g. 'rome' or 'rome,iw' or 'rome,smoke')"
        )
    city = cities[0]
    rest = ",".join(w for w in words if w != city)
    variant, smoke = configlib.parse_arg(rest, VARIANTS, "maxsquare")
    c = configlib.base_config()
    configlib.set_variant(c, variant)
    c.model.num_classes = 13
    c.source.dataset, c.source.config = "cityscapes", "1024x512"
    c.target.dataset, c.target.config = "nthu", f"{city}_1024x512"
    c.eval.dataset, c.eval.config, c.eval.split = "nthu", f"{city}_1024x512", "test"
    c.loss.multi_threshold = 0.98
    if variant == "source":  # undocumented in the original: keep the 10 epochs
        c.train.steps = 10 * configlib.EPOCH_STEPS
        c.optim.iter_max = 29_760
    if smoke:
        configlib.apply_smoke(c)
    return c
