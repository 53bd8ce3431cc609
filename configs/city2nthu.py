r"""Cityscapes -> NTHU cross-city (Rome, Rio, Tokyo, Taipei), 13 classes.

    python -m msjax.reproduce city2nthu:CITY[,METHOD] --cityscapes RAW --nthu RAW \
        --init WEIGHTS_13 --workdir runs/paper

or one run: `python -m msjax.train --config configs/city2nthu.py:CITY[,METHOD] --workdir DIR
--config.data_dir=DATA --config.init.checkpoint=WEIGHTS` (docs/protocol.md has the chains).

Published 13-class mIoU on each city's 100 test images (source-only / maxsquare / iw):
  rome 51.0 / 53.9 / 54.5    rio 48.9 / 52.0 / 53.3
  tokyo 47.8 / 49.7 / 50.5   taipei 46.3 / 49.8 / 50.6
METHOD: a method of msjax.methods: maxsquare (default), iw, source (the paper's rows), or
another one (minent, hard, control).
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
from msjax.data.datasets import NTHU_CITIES

SETTING = configlib.Setting(
    "city2nthu",
    source="cityscapes",
    targets=tuple(f"nthu-{city}" for city in NTHU_CITIES),
    num_classes=13,
    threshold=0.98,  # solve_crosscity.py's --threshold default, for both masks
)


def get_config(arg=None):
    return configlib.experiment(SETTING, arg)
