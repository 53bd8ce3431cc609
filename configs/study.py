r"""The study: what the target loss itself adds, per shift and method, over seeds, on a CPU.

    python -m msjax.study --workdir runs/study [--config configs/study.py[:ARG]]

ARG: '' (the multi-seed study), 'pilot' (one seed, the pilot that fixed the study's design) or
'smoke' (a few steps, for tests). docs/study.md has the design, the reasons for it, the
measured tables and how long they took.

Per seed: one source-only model (CE(main) + 0.1 CE(aux), so the IW + Multi run has a trained aux
head), scored on every shift's target validation split; then per shift, from that model's
final weights, every method's adaptation, the control being the same schedule with
lambda_target = 0. The model, batch, image size and optimiser are the demo's
(configs/demo.py): blocks [1,1,1,1], width 16, random init, 4 pairs of 96x192 per step,
per-image BN, the faithful losses, SGD and poly schedule.
"""

from msjax import configlib


def get_config(arg=None):
    variant, smoke = configlib.parse_words(arg, ("study", "pilot"), "study")
    c = configlib.base_config()
    c.batch_pairs = 4
    c.model.blocks = (1, 1, 1, 1)
    c.model.width = 16
    configlib.use_synthetic(c, "192x96")
    c.eval.batch_size = 20
    c.optim.lr = 0.01
    c.train.log_every = 25
    c.train.checkpoint_every = 500
    c.train.tensorboard = False
    c.train.num_images = 0
    c.study = dict(
        # The prefix of the figures msjax.study --docs_dir writes.
        name=variant,
        # Seed 0 ran the pilot; the study's seeds are fresh, so choosing its design on the
        # pilot cannot favour any method on them.
        seeds=(1, 2, 3, 4, 5),
        # A shift is a generated target data set ('synthetic-target' is the "real" style).
        # fog-2 and lambda 1 were chosen on the pilot (docs/study.md).
        shifts=("synthetic-fog-2", "synthetic-target"),
        methods=("control", "minent", "hard", "maxsquare", "iw", "iw_multi"),
        lambdas=(1.0,),
        # More (method, lambda) runs per seed and shift. MaxSquare at 3.2: the gradient its
        # loss puts on the target logits matches MinEnt's at lambda 1 (docs/study.md),
        # separating the shape of the loss from its strength.
        extra=(("maxsquare", 3.2),),
        source_steps=600,
        adapt_steps=300,
        adapt_lr=0.002,
        eval_every=100,
    )
    if variant == "pilot":
        c.study.seeds = (0,)
        c.study.shifts = tuple(
            f"synthetic-{d}" for d in ("target", "fog-1", "fog-2", "fog-3", "noise-1", "noise-2",
                                       "noise-3")
        )  # fmt: skip
        c.study.methods = ("control", "minent", "maxsquare")
        c.study.lambdas = (0.1, 1.0)
        c.study.extra = ()
    if smoke:
        configlib.use_synthetic(c, "128x64")
        c.model.width = 8
        c.eval.batch_size = 8
        c.train.log_every = 1
        c.study.name = "smoke"
        c.study.seeds = (1, 2)
        c.study.shifts = ("synthetic-fog-2",)
        c.study.methods = ("control", "maxsquare")
        c.study.extra = ()
        c.study.source_steps, c.study.adapt_steps, c.study.eval_every = 2, 2, 1
    return c
