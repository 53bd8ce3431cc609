r"""GTA5 -> Cityscapes (19 classes), the paper's main setting.

    python -m msjax.train --config configs/gta2city.py:ARG --workdir runs/gta2city_ARG \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS

ARG (default maxsquare)   published target mIoU (Cityscapes val, 1024x512 protocol 'original')
  source     source-only pretraining on GTA5 1280x720: 80,000 of 200,000 poly steps,  36.9
             init: the DeepLab ImageNet init converted with `python -m msjax.convert`
  maxsquare  maximum squares, lambda 0.1, 10 epochs x 2,975 steps                        44.3
  iw         image-wise weighted maximum squares (ratio 0.2)                             45.2
  iw_multi   IW + multi-level self-produced guidance (lambda 0.09, t 0.95, 1280x640)     46.4
  minent     entropy minimisation baseline                                               42.2
  hard       hard pseudo-label baseline (threshold 0.95)                                    -
Adaptation starts from the source-only model (WEIGHTS = its run's best/ or final/ folder,
or the original's GTA5_source.pth converted). Append ',smoke' (e.g. 'iw,smoke') for a
two-step CPU run on the synthetic data with a tiny model.
Data: `python -m msjax.prepare gta5 RAW --data-dir DATA` and `... cityscapes RAW ...`.
One faithful run: 29,750 steps of 1 + 1 images.
"""

from msjax import configlib

VARIANTS = ("maxsquare", "iw", "iw_multi", "minent", "hard", "source")


def get_config(arg=None):
    variant, smoke = configlib.parse_arg(arg, VARIANTS, "maxsquare")
    c = configlib.base_config()
    configlib.set_variant(c, variant)
    if smoke:
        configlib.apply_smoke(c)
    return c
