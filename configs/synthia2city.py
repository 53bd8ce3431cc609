r"""SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16 classes (mIoU16 and mIoU13 reported).

    python -m msjax.train --config configs/synthia2city.py:ARG --workdir runs/synthia_ARG \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS

ARG (default maxsquare)   published target mIoU16 / mIoU13 (Cityscapes val, 1024x512)
  source     source-only on SYNTHIA 1280x760                      30.1 / 34.3
  maxsquare                                                       39.3 / 45.8
  iw                                                              40.4 / 46.9
  iw_multi   (lambda 0.09, Cityscapes 1280x640)                   41.4 / 48.2
  minent                                                          38.0 / 44.5
mIoU13 is the 16-class confusion matrix restricted to the 13 shared classes. The source-only
run maps SYNTHIA labels to the 16 classes (the original forgot to). Append ',smoke' for a
two-step CPU run on synthetic data.
"""

from msjax import configlib

VARIANTS = ("maxsquare", "iw", "iw_multi", "minent", "source")


def get_config(arg=None):
    variant, smoke = configlib.parse_arg(arg, VARIANTS, "maxsquare")
    c = configlib.base_config()
    configlib.set_variant(c, variant)
    c.model.num_classes = 16
    c.source.dataset, c.source.config = "synthia", "1280x760"
    if smoke:
        configlib.apply_smoke(c)
    return c
