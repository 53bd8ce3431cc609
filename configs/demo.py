r"""The demo: maximum squares adaptation on a synthetic domain shift, on a CPU, no download.

    python -m msjax.demo --workdir /tmp/msjax_demo [--config configs/demo.py:smoke]

Generates the synthetic "synthetic-style" (source) and "real-style" (target) street scenes
(msjax.data.synthetic), trains a small DeepLabV2 on the labelled source only, then adapts it
to the unlabelled target with MaxSquare and with MaxSquare + IW, beside a control that runs the
same adaptation with lambda_target = 0 (only the BN statistics see the target), and prints the
target validation mIoU of all four (also in WORKDIR/results.json); docs/demo.md has the
measured table and time. Differences from the paper's setting, all for speed: a small
backbone from random initialisation (blocks [1,1,1,1], width 16) with a larger learning
rate, 4 image pairs per step, 96x192 images. Losses, BN mode, optimiser and schedule are the
faithful ones. Argument 'smoke' makes it a few steps long (for tests).
"""

from msjax import configlib


def get_config(arg=None):
    _, smoke = configlib.parse_arg(arg, (), "")
    c = configlib.base_config()
    c.batch_pairs = 4
    c.model.blocks = (1, 1, 1, 1)
    c.model.width = 16
    configlib.use_synthetic(c, "192x96")
    c.eval.batch_size = 20
    c.optim.lr = 0.01
    c.train.log_every = 25
    c.train.checkpoint_every = 500
    c.demo = dict(source_steps=600, adapt_steps=300, adapt_lr=0.002)
    if smoke:
        c.demo.source_steps, c.demo.adapt_steps = 2, 2
        c.train.log_every = 1
    return c
