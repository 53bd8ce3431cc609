r"""Cityscapes -> NTHU cross-city (Rome, Rio, Tokyo, Taipei), 13 classes.

    python -m msjax.reproduce city2nthu:CITY[,VARIANT] --cityscapes RAW --nthu RAW \
        --init WEIGHTS_13 --workdir runs/paper

or one run: `python -m msjax.train --config configs/city2nthu.py:CITY[,VARIANT] --workdir DIR
--config.data_dir=DATA --config.init.checkpoint=WEIGHTS` (docs/protocol.md has the chains).

Published 13-class mIoU on each city's 100 test images (source-only / maxsquare / iw):
  rome 51.0 / 53.9 / 54.5    rio 48.9 / 52.0 / 53.3
  tokyo 47.8 / 49.7 / 50.5   taipei 46.3 / 49.8 / 50.6
VARIANT: maxsquare (default), iw or source.
- source: one model for all four cities (the original's Cityscapes_source_class13.pth): 13-class
  source-only training on Cityscapes train 1024x512, 80,000 of a 200,000-step poly, validated
  on Cityscapes val after every epoch of 2,975 steps (best/ by Cityscapes val mIoU). 'source'
  and 'CITY,source' are the same config. WEIGHTS_13: the DeepLab init converted with
  --num-classes 13.
- maxsquare, iw: from the source model's final/, 10 epochs of 2,975 steps, lambda 0.1, crops
  1024x512; validated on the city's test images every epoch, best/ by their mIoU (target labels
  pick that checkpoint, as in the original: NTHU has no separate val split). `--threshold`
  0.98 of the original applies to both the hard-label and the multi-level masks.
Append ',smoke' for a two-step CPU run on synthetic data.
"""

from msjax import configlib
from msjax.errors import ConfigError

CITIES = ("rome", "rio", "tokyo", "taipei")
VARIANTS = ("maxsquare", "iw", "source")


def get_config(arg=None):
    words = [w for w in (arg or "").split(",") if w]
    cities = [w for w in words if w in CITIES]
    rest = [w for w in words if w not in CITIES]
    if len(cities) > 1 or (not cities and "source" not in rest):
        raise ConfigError(
            f"city2nthu needs exactly one city in its argument, got {arg!r}; valid cities: "
            f"{', '.join(CITIES)} (e.g. 'rome' or 'rome,iw' or 'rome,smoke'; 'source' alone "
            "is the Cityscapes source model of every city)"
        )
    variant, smoke = configlib.parse_arg(",".join(rest), VARIANTS, "maxsquare")
    c = configlib.base_config()
    c.model.num_classes = 13
    c.source.dataset, c.source.config = "cityscapes", "1024x512"
    c.loss.threshold = c.loss.multi_threshold = 0.98  # solve_crosscity.py's --threshold default
    if variant == "source":
        configlib.set_variant(c, variant)
        # train_source.py validates after each epoch: Cityscapes train (2,975 steps) is
        # shorter than its 5,000-step cap.
        c.eval.every_steps = configlib.EPOCH_STEPS
    else:
        city = cities[0]
        c.target.dataset, c.target.config = "nthu", f"{city}_1024x512"
        c.eval.dataset, c.eval.config, c.eval.split = "nthu", f"{city}_1024x512", "test"
        configlib.set_variant(c, variant)
    if smoke:
        configlib.apply_smoke(c)
    return c
