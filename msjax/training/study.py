"""The study's runs: per seed a source model, then every method's adaptation on every shift.

`python -m msjax.study` (configs/study.py) measures what a target loss adds beyond the
control (the same adaptation schedule with lambda_target = 0, where target images only update
the BN statistics). Its runs are ordinary, resumable training runs (`msjax.training.stages`)
in one workdir:

    seed<S>/source                      source only: CE(main) + lambda_seg * CE(aux), scored
                                        on the source style's val split (the paper's rule)
    seed<S>/source/scores/<shift>.json  that model's scores on each shift's target val split
    seed<S>/<shift>/control             adaptation with lambda_target = 0
    seed<S>/<shift>/<method>_lam<L>     adaptation with the method's loss at lambda L

Every adaptation of a seed starts from the final weights of that seed's source model, so the
methods of one seed differ only in their loss (a paired comparison). One source model serves
all methods: it is trained with the auxiliary head (the paper trains a separate multi-level
source model for IW + Multi only), which costs the other methods nothing, as their aux head is
frozen and never read. A finished run or score is skipped, so running the command again
continues an interrupted study; WORKDIR/timing.jsonl records the runs that ran and how long
each took.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp

from msjax import config_checks, methods, outputs
from msjax.training.stages import Stage, finished_summary, run_stage


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One training run of the study: a stage and what it stands for."""

    stage: Stage
    seed: int
    method: str  # 'source_multi' or a method of msjax.methods
    shift: str | None = None  # the target data set; None for the source model
    lam: float | None = None  # the study's lambda (None for the source and the control)


def run_name(seed: int, method: str, shift: str | None = None, lam: float | None = None) -> str:
    """The run's folder under the study's workdir."""
    if shift is None:
        return f"seed{seed}/source"
    suffix = "" if lam is None else f"_lam{lam:g}"
    return f"seed{seed}/{shift}/{method}{suffix}"


def _run_config(config, seed: int, data_dir: str):
    c = copy.deepcopy(config)
    with c.unlocked():
        del c["study"]
    c.seed = seed
    c.data_dir = data_dir
    return c


def source_run(config, seed: int, data_dir: str) -> StudyRun:
    """The seed's source-only run (with the aux head), validated on the source style."""
    c = _run_config(config, seed, data_dir)
    c.method = "source_multi"
    c.eval.dataset, c.eval.size = c.source.dataset, c.source.size
    c.train.steps = c.eval.every_steps = c.optim.iter_max = config.study.source_steps
    title = f"seed {seed}: source only"
    return StudyRun(Stage(run_name(seed, "source_multi"), title, c), seed, "source_multi")


def adaptation_run(config, seed: int, shift: str, method: str, lam: float, workdir: str,
                   data_dir: str) -> StudyRun:  # fmt: skip
    """One method's adaptation on one shift, from the seed's final source weights."""
    from msjax import configlib

    entry = methods.get(method, "config.study.methods")
    c = _run_config(config, seed, data_dir)
    configlib.use_synthetic(c, c.source.size, shift)
    c.init.checkpoint = os.path.join(workdir, run_name(seed, "source_multi"), "final")
    c.method = entry.name
    c.loss.lambda_target = entry.lambda_target(lam or 0.0)
    c.optim.lr = config.study.adapt_lr
    c.train.steps = c.optim.iter_max = config.study.adapt_steps
    c.eval.every_steps = config.study.eval_every
    name = run_name(seed, method, shift, lam)
    title = f"seed {seed}, {shift}: {entry.title}" + ("" if lam is None else f" ({lam:g})")
    return StudyRun(Stage(name, title, c), seed, method, shift, lam)


def study_runs(config, workdir: str) -> list[StudyRun]:
    """Every run of the study, seed by seed (so an unfinished study holds whole seeds)."""
    study = config.study
    config_checks.check_study(study)
    data_dir = config.data_dir or os.path.join(workdir, "data")
    runs = []
    for seed in study.seeds:
        runs.append(source_run(config, seed, data_dir))
        for shift in study.shifts:
            runs += [
                adaptation_run(config, seed, shift, method, lam, workdir, data_dir)
                for method, lam in method_lambdas(study)
            ]
    for run in runs:  # every run's fields, before the first one trains (paths when it starts)
        config_checks.check_config(run.stage.config, check_paths=False)
    return runs


def method_lambdas(study) -> list[tuple[str, float | None]]:
    """(method, lambda) of each adaptation per seed and shift: every method at every lambda
    (the control once, lambda None), then the extra pairs."""
    pairs = []
    for method in study.methods:
        lambdas = [None] if method == "control" else list(study.lambdas)
        pairs += [(method, lam) for lam in lambdas]
    pairs += [(m, float(lam)) for m, lam in study.extra if (m, float(lam)) not in pairs]
    return pairs


def _gradient_sums(model, variables, images, valid):
    """Per loss: (gradient magnitude on easy pixels, on all pixels), summed over the batch.

    On the logits the target loss sees in adaptation: a training-mode pass (per-image BN
    statistics), at the model's output size.
    """
    from msjax import losses

    (logits, _), _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    easy = losses.easy_pixels(logits)
    sums = []
    for loss_fn in (losses.entropy, losses.max_square, losses.iw_max_square):
        magnitude = losses.logit_gradient_magnitude(loss_fn, logits) * valid[:, None, None]
        sums += [jnp.sum(jnp.where(easy, magnitude, 0.0)), jnp.sum(magnitude)]
    return jnp.stack(sums)


def _confidence_sums(model, variables, images, label, mask, pred, conf):
    """Pixel counts by confidence and outcome, and the gradient sums (`_gradient_sums`)."""
    from msjax import losses

    num_classes = model.num_classes
    valid = mask[:, None, None] & (label < num_classes)
    easy = conf > losses.EASY_PROBABILITY
    right = pred == label
    counts = jnp.stack([
        jnp.sum(valid), jnp.sum(valid & easy), jnp.sum(valid & easy & right),
        jnp.sum(valid & ~easy & right), jnp.sum(valid & easy & ~right),
    ])  # fmt: skip
    return {"counts": counts, "grads": _gradient_sums(model, variables, images, mask)}


def score_weights(weights_dir: str, dataset: str, size: str, data_dir: str) -> dict:
    """Scores a weights folder on a data set's val split, with its confidence statistics.

    Args:
      weights_dir: e.g. a run's final/.
      dataset: a generated data set, e.g. 'synthetic-fog-2'.
      size: the synthetic size, e.g. '192x96'.
      data_dir: where the synthetic data sets are prepared.

    Returns:
      metrics.summarize's scores plus 'class_iou' {name: IoU}, 'easy_pixels' (share of
      pixels predicted with p > 0.9), 'easy_accuracy', 'uncertain_accuracy' (pixel accuracy
      among those with p > 0.9 and the rest), 'confident_errors' (share of the wrong pixels
      predicted with p > 0.9); and on the logits a target loss sees in adaptation
      (training-mode BN): 'grad_share_minent', 'grad_share_maxsquare' (the share of each
      loss's logit gradient on pixels with p > 0.9), 'grad_ratio_minent_maxsquare' and
      'grad_ratio_iw_maxsquare' (the ratio of MinEnt's and IW MaxSquare's total gradient
      magnitude to MaxSquare's at the same lambda).
    """
    import functools

    from msjax import weights
    from msjax.data.pipeline import make_eval_stream
    from msjax.evaluation import inference, metrics
    from msjax.evaluation.loop import evaluate_split

    model, variables = weights.load(weights_dir)
    norm = weights.read_metadata(weights_dir)["input_normalization"]
    stream = make_eval_stream(
        dict(dataset=dataset, size=size, split="val", batch_size=20, data_dir=data_dir,
             num_classes=model.num_classes, normalization=norm, flip=False, blur=False)
    )  # fmt: skip
    extra = functools.partial(_confidence_sums, model)
    step = inference.make_eval_step(model, model.num_classes, extra=extra)
    matrix, sums = evaluate_split(step, variables, stream, model.num_classes)
    counts, grads = sums["counts"], sums["grads"]
    total, easy, easy_right, uncertain_right, easy_wrong = (int(x) for x in counts)
    wrong = total - easy_right - uncertain_right
    easy_minent, all_minent, easy_maxsquare, all_maxsquare, _, all_iw = (float(x) for x in grads)
    scores = metrics.summarize(matrix)
    scores["class_iou"] = dict(zip(scores["classes"], scores["iou"], strict=True))
    scores.update(
        easy_pixels=easy / max(total, 1),
        easy_accuracy=easy_right / max(easy, 1),
        uncertain_accuracy=uncertain_right / max(total - easy, 1),
        confident_errors=easy_wrong / max(wrong, 1),
        grad_share_minent=easy_minent / max(all_minent, 1e-30),
        grad_share_maxsquare=easy_maxsquare / max(all_maxsquare, 1e-30),
        grad_ratio_minent_maxsquare=all_minent / max(all_maxsquare, 1e-30),
        grad_ratio_iw_maxsquare=all_iw / max(all_maxsquare, 1e-30),
    )
    return scores


def score_source(config, run: StudyRun, workdir: str) -> None:
    """Scores the seed's source model on every shift once (WORKDIR/.../scores/<shift>.json).

    Only a finished source run is scored; the command's report calls this again, so scores
    whose fields changed since they were written are brought up to date without training.
    """
    from msjax import configlib
    from msjax.training.run import ensure_generated_prepared

    folder = os.path.join(workdir, run.stage.name)
    if finished_summary(folder, run.stage.config.train.steps) is None:
        return
    size = config.source.size
    for shift in config.study.shifts:
        path = os.path.join(folder, "scores", f"{shift}.json")
        if os.path.isfile(path):
            with open(path) as f:
                if "grad_ratio_iw_maxsquare" in json.load(f):
                    continue  # scored (an older score lacks the gradient figures: redone)
        shifted = copy.deepcopy(run.stage.config)
        configlib.use_synthetic(shifted, size, shift)
        ensure_generated_prepared(shifted, shifted.data_dir)
        scores = score_weights(os.path.join(folder, "final"), shift, size, shifted.data_dir)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        outputs.write_text(path, json.dumps(scores, indent=1))


def run_study(config, workdir: str) -> dict:
    """Runs (or continues) every run of the study in `workdir`.

    Returns:
      {'finished': number of runs finished, 'ran_s': seconds of the runs this call ran},
      plus 'stop_signal' if a signal stopped a run (the study stops there).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    runs = study_runs(config, workdir)
    ran_s = 0.0
    for i, run in enumerate(runs):
        steps = run.stage.config.train.steps
        fresh = finished_summary(os.path.join(workdir, run.stage.name), steps) is None
        start = time.perf_counter()
        summary = run_stage(run.stage, workdir)
        if "stop_signal" in summary:
            return {"finished": i, "ran_s": ran_s, "stop_signal": summary["stop_signal"]}
        if run.shift is None:
            score_source(config, run, workdir)
        if fresh:
            seconds = time.perf_counter() - start
            ran_s += seconds
            record = {"run": run.stage.name, "steps": steps, "seconds": round(seconds, 1),
                      "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            if jax.process_index() == 0:
                with open(os.path.join(workdir, "timing.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
    return {"finished": len(runs), "ran_s": ran_s}
