"""The demo: does maximum squares adaptation help on a domain shift? Measured, on a CPU.

Four trainings of a small DeepLabV2 on the procedural synthetic data (msjax.data.synthetic):
  1. source only: labelled "synthetic"-style scenes, no target loss;
  2. control: from (1), the adaptation schedule with lambda_target = 0. Target images pass
     through the model (updating the BN running statistics, as in the original) but no
     target loss acts: what adaptation gains without the loss;
  3. MaxSquare: from (1), labelled source + unlabelled "real"-style target, maximum squares;
  4. MaxSquare + IW: from (1), the image-wise class-balanced variant.
Each is scored on the target style's validation split. The table and WORKDIR/results.json
hold the four mIoUs. Run by `python -m msjax.train --config configs/demo.py --workdir DIR`.
"""

from __future__ import annotations

import copy
import json
import os
import time

import jax

# (name, title, target loss, lambda_target or None for the config's)
STAGES = (
    ("source", "source only", "none", None),
    ("bn_stats_only", "target BN stats only", "maxsquare", 0.0),
    ("maxsquare", "MaxSquare", "maxsquare", None),
    ("iw_maxsquare", "MaxSquare + IW", "iw_maxsquare", None),
)


def stage_config(config, target_loss: str, init: str, steps: int):
    """The run config of one stage: the demo config with its loss, length and start point."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.experiment = "train"
        c.loss.target = target_loss
        c.init.checkpoint = init
        c.train.steps = steps
        c.eval.every_steps = steps
        c.optim.iter_max = steps
    return c


def run_demo(config, workdir: str) -> dict:
    """Runs the stages in WORKDIR/<stage name>; prints the table, writes results.json.

    An interrupted demo resumes: each stage is a resumable training run in its own folder.
    """
    from msjax.trainer import train_and_evaluate

    workdir = os.path.abspath(os.path.expanduser(workdir))
    data_dir = config.data_dir or os.path.join(workdir, "data")
    start = time.perf_counter()
    rows = {}
    source_weights = os.path.join(workdir, "source", "final")
    for name, title, loss, lambda_target in STAGES:
        adapt = loss != "none"
        c = stage_config(
            config,
            loss,
            init=source_weights if adapt else "",
            steps=config.demo.adapt_steps if adapt else config.demo.source_steps,
        )
        with c.unlocked():
            c.data_dir = data_dir
            if adapt:
                c.optim.lr = config.demo.adapt_lr
            if lambda_target is not None:
                c.loss.lambda_target = lambda_target
        stage_dir = os.path.join(workdir, name)
        if jax.process_index() == 0:
            print(f"\n== {title}: {c.train.steps} steps -> {stage_dir}", flush=True)
        summary = train_and_evaluate(c, stage_dir)
        rows[name] = {"title": title, "target_miou": summary["last_miou"]}
    elapsed = time.perf_counter() - start
    results = {
        "target_miou": {name: row["target_miou"] for name, row in rows.items()},
        "seed": config.seed,
        "wall_time_s": round(elapsed, 1),
        "eval": f"{config.eval.dataset}/{config.eval.config}/{config.eval.split}",
    }
    if jax.process_index() == 0:
        base = rows["source"]["target_miou"]
        print(f"\nTarget-style validation mIoU ({results['eval']}, seed {config.seed}):")
        print(f"  {'method':<22}{'mIoU':>8}{'vs source':>12}")
        for row in rows.values():
            gain = 100 * (row["target_miou"] - base)
            print(f"  {row['title']:<22}{100 * row['target_miou']:>7.1f}%{gain:>+11.1f}")
        print(f"  wall time {elapsed / 60:.1f} min")
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results
