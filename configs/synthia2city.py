r"""SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16 classes (mIoU16 and mIoU13 reported).

    python -m msjax.reproduce synthia2city:ARG --synthia RAW --cityscapes RAW \
        --init WEIGHTS_16 --workdir runs/paper

or one run: `python -m msjax.train --config configs/synthia2city.py:ARG --workdir DIR
--config.data_dir=DATA --config.init.checkpoint=WEIGHTS` (docs/protocol.md has the chains).

ARG: a method of msjax.methods (default maxsquare); published target mIoU16 / mIoU13
(Cityscapes val, 1024x512):
  source        source-only on SYNTHIA train 1280x760 (80,000 of 200,000 poly     30.1 / 34.3
                steps), validated on SYNTHIA val every 5,000 steps
  source_multi  the same with CE(main) + 0.1 CE(aux): the source of iw_multi            -
  maxsquare                                                                 39.3 / 45.8
  iw                                                                        40.4 / 46.9
  iw_multi      (lambda 0.09, Cityscapes 1280x640 for training and validation) 41.4 / 48.2
  minent                                                                    38.0 / 44.5
mIoU13 is the 16-class confusion matrix restricted to the 13 shared classes. As in the
original (its val_info returns MIoU_13 for 16 classes), best/ is the checkpoint of the best
mIoU13 on the split validated on (`eval.select = 'miou13'`): SYNTHIA val for source runs,
Cityscapes val for adaptation runs (target labels pick that checkpoint). The source-only run
maps SYNTHIA labels to the 16 classes (the original forgot to). WEIGHTS_16: the DeepLab init
converted with --num-classes 16. Append ',smoke' for a two-step CPU run on synthetic data.
"""

from msjax import configlib

SETTING = configlib.Setting(
    "synthia2city", source="synthia", targets=("cityscapes",), num_classes=16, select="miou13"
)


def get_config(arg=None):
    return configlib.experiment(SETTING, arg)
