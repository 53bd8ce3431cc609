r"""GTA5 -> Cityscapes (19 classes), the paper's main setting.

One command runs a paper row end to end (data, source model, adaptation, evaluation, report;
docs/protocol.md):

    python -m msjax.reproduce gta2city:ARG --gta5 RAW --cityscapes RAW --init WEIGHTS \
        --workdir runs/paper [--source-weights CONVERTED_SOURCE_MODEL]

or one run of it:

    python -m msjax.train --config configs/gta2city.py:ARG --workdir runs/gta2city_ARG \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS

ARG: a method of msjax.methods (default maxsquare); the paper's published target mIoU
(Cityscapes val, 1024x512 protocol 'original'):
  source        source-only pretraining on GTA5 train 1280x720: 80,000 of a 200,000-step   36.9
                poly, validated on GTA5 val every 5,000 steps (best/ by GTA5 val mIoU)
                init: the DeepLab ImageNet init converted with `python -m msjax.convert`
  source_multi  the same with CE(main) + 0.1 CE(aux) (the original's --multi True): the       -
                source model of iw_multi
  maxsquare     maximum squares, lambda 0.1, 10 epochs x 2,975 steps                        44.3
  iw            image-wise weighted maximum squares (ratio 0.2)                             45.2
  iw_multi      IW + multi-level self-produced guidance (lambda 0.09, t 0.95, Cityscapes    46.4
                1280x640 for training and validation)
  minent        entropy minimisation baseline                                               42.2
  hard          hard pseudo-label baseline (threshold 0.95)                                    -
  control       the adaptation schedule with lambda_target = 0 (BN statistics only)            -
Adaptation starts from source/final (WEIGHTS = that folder, or the original's GTA5_source.pth
converted); iw_multi from source_multi/best. Adaptation validates on Cityscapes val every
2,975 steps and keeps best/ by its mIoU: target labels pick that checkpoint, as in the
original (whose README evaluates it). The original's evaluation command uses --flip True and
does not say whether the published numbers did: msjax.reproduce reports both.
Append ',smoke' (e.g. 'iw,smoke') for a two-step CPU run on the synthetic data with a tiny
model. Data: `python -m msjax.prepare gta5 RAW --data-dir DATA` and `... cityscapes RAW ...`
(and `--size 1280x640` of Cityscapes for iw_multi).
"""

from msjax import configlib

SETTING = configlib.Setting("gta2city", source="gta5", targets=("cityscapes",), num_classes=19)


def get_config(arg=None):
    return configlib.experiment(SETTING, arg)
