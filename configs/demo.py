r"""The demo: what maximum squares adds on a synthetic domain shift, on a CPU, no download.

    python -m msjax.demo --workdir /tmp/msjax_demo [--config configs/demo.py:smoke]

Generates source-style street scenes with labels and the same kind of scenes in fog
("synthetic-fog-2", msjax.data.synthetic) without, trains a small DeepLabV2 on the labelled
source only, then adapts it to the fog with each method of `demo.methods` (msjax.methods)
from the same weights: a control that runs the adaptation schedule with lambda_target = 0
(only the BN statistics see the target), MinEnt and MaxSquare; it prints the target
validation mIoU of all four (also in WORKDIR/results.json). The shift and lambda_target = 1
are those of the study where the losses' own effect was largest (docs/study.md);
docs/demo.md has the demo's measured table and time. Differences from the paper's setting,
all for speed: a small backbone from random initialisation (blocks [1,1,1,1], width 16) with
a larger learning rate, 4 image pairs per step, 96x192 images, 300 adaptation steps. Losses,
BN mode, optimiser and schedule are the faithful ones.
Argument 'smoke' makes it a few steps long (for tests).
"""

from msjax import configlib


def get_config(arg=None):
    _, smoke = configlib.parse_words(arg, (), "")
    c = configlib.base_config()
    c.batch_pairs = 4
    c.model.blocks = (1, 1, 1, 1)
    c.model.width = 16
    configlib.use_synthetic(c, "192x96", target="synthetic-fog-2")
    c.loss.lambda_target = 1.0
    c.eval.batch_size = 20
    c.optim.lr = 0.01
    c.train.log_every = 25
    c.train.checkpoint_every = 500
    # The source model ('source'), then each method of msjax.methods from its final weights.
    c.demo = dict(
        methods=("control", "minent", "maxsquare"),
        source_steps=600,
        adapt_steps=300,
        adapt_lr=0.002,
    )
    if smoke:
        c.demo.source_steps, c.demo.adapt_steps = 2, 2
        c.train.log_every = 1
    return c
