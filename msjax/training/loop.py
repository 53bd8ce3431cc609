"""`train_and_evaluate(config, workdir)`: one training run, resumable, sharded over all devices.

The run is built once (`msjax.training.run.build_run`), then trained step by step:

    for each step:  next source (and target) batch -> jitted step -> metrics kept on device
                    at log steps:   fetch, check finite, write metrics.jsonl / TensorBoard
                    at eval steps:  validate; a new best score (config.eval.select) exports
                                    WORKDIR/best
                    at save steps:  save the train state (asynchronously, atomically)
                    on SIGTERM / Ctrl-C: save this step and stop
    at the end:     validate (if not just done), export WORKDIR/final, write results.json

Starting again with the same workdir resumes from its latest checkpoint, with the same data
order. The run writes WORKDIR/config.json, metrics.jsonl, tensorboard/, checkpoints/ (train
states), best/ and final/ (weights folders for msjax.evaluate, msjax.predict and
config.init.checkpoint) and results.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from msjax import locks, outputs, sharding
from msjax.errors import TrainingError
from msjax.training import preemption
from msjax.training.checkpoints import export_weights
from msjax.training.run import Run, build_run


class MetricHistory:
    """Per-step metrics kept on the device until a log step, then checked and averaged.

    Fetching only at log, save and evaluation steps keeps the host from waiting for the
    device at every step.
    """

    def __init__(self):
        self._pending = []  # (step, {name: device scalar})
        self._since = time.perf_counter()

    def append(self, step: int, metrics) -> None:
        self._pending.append((step, metrics))

    def fetch(self) -> tuple[dict[str, float], tuple[int, str] | None]:
        """(mean of every metric + steps_per_sec, first non-finite (step, name) or None)."""
        fetched = [
            (k, {n: float(v) for n, v in jax.device_get(m).items()}) for k, m in self._pending
        ]
        self._pending.clear()
        mean = {n: float(np.mean([v[n] for _, v in fetched])) for n in fetched[-1][1]}
        now = time.perf_counter()
        mean["steps_per_sec"] = len(fetched) / max(now - self._since, 1e-9)
        self._since = now
        return mean, first_non_finite(fetched)


def first_non_finite(history) -> tuple[int, str] | None:
    """(step, metric name) of the first non-finite metric in [(step, {name: value})]."""
    for step, values in history:
        for name, value in values.items():
            if not np.isfinite(value):
                return step, name
    return None


@jax.jit
def _leaves_finite(leaves):
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def all_finite(tree) -> bool:
    """True when every floating-point leaf of `tree` is finite (one jitted reduction)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(_leaves_finite(leaves))


@dataclasses.dataclass(frozen=True)
class Due:
    """What a step is due for."""

    log: bool
    evaluate: bool
    save: bool


def due_at(step: int, config, stopping: bool) -> Due:
    """The log / evaluation / save duties of `step`; a stopping run saves, not evaluates."""
    last = step == config.train.steps
    return Due(
        log=step % config.train.log_every == 0 or last,
        evaluate=(step % config.eval.every_steps == 0 or last) and not stopping,
        save=step % config.train.checkpoint_every == 0 or last or stopping,
    )


def next_batches(run: Run) -> tuple:
    """The step's (source, target) global batches; target None in source-only training."""
    source = sharding.to_global(next(run.streams["source"]), run.mesh)
    if not run.method.adapting:
        return source, None
    target = next(run.streams["target"])
    return source, sharding.to_global({"image": target["image"]}, run.mesh)


def no_checkpoint_note(run: Run) -> str:
    """Where the last good train state is, after waiting for any save under way."""
    run.checkpoints.wait()
    latest = run.checkpoints.latest_step()
    if latest is None:
        return "No checkpoint had been saved yet."
    return f"The last good checkpoint (step {latest}) in {run.checkpoints.directory} is intact."


def log_metrics(run: Run, history: MetricHistory, step: int, bar) -> None:
    """Writes the mean metrics since the last log; stops the run on a non-finite one."""
    mean, bad = history.fetch()
    if bad:
        raise TrainingError(
            f"Non-finite {bad[1]} at step {bad[0]}; stopping. {no_checkpoint_note(run)} "
            "Lower config.optim.lr or check the data and the config.loss fields."
        )
    mean["lr"] = float(run.optimizer.schedule(step - 1))
    run.writer.scalars(step, mean)
    bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean['lr']:.2e}")


def weights_metadata(run: Run, **run_facts) -> dict:
    """Metadata of an exported weights folder (same format as msjax.convert writes)."""
    model, init_meta = run.model, run.init_meta
    return {
        "source": "msjax.train",
        "source_sha256": "",
        "layout": "msjax-train",
        "num_classes": model.num_classes,
        "blocks": list(model.blocks),
        "width": model.width,
        "stride_on": model.stride_on,
        "aspp_branches": model.aspp_branches,
        "input_normalization": init_meta["input_normalization"],
        "heads": "trained",
        "method": run.method.name,
        "initialised_from": init_meta.get("source", init_meta.get("layout")),
        **run_facts,
    }


def export(run: Run, folder: str, step: int, **facts) -> None:
    """Writes the current weights to WORKDIR/<folder> (an older one is replaced only after)."""
    path = os.path.join(run.workdir, folder)
    metadata = weights_metadata(run, step=step, **facts)
    try:
        export_weights(path, run.state.params, run.state.batch_stats, metadata)
    except OSError as e:
        raise TrainingError(
            f"Could not write the {folder} weights of step {step} to {path}: {e}. Any earlier "
            f"{path} is intact; the train states are in {run.checkpoints.directory}."
        ) from e


def validate(run: Run, step: int) -> float:
    """Validates the current weights; a new best `config.eval.select` score exports best/.

    Returns:
      The score that selects (mIoU, or mIoU13 for 16-class runs as in the original).
    """
    result = run.validator.run(run.state.params, run.state.batch_stats, step, run.writer)
    select = run.config.eval.select
    run.last_scores = {k: result[k] for k in ("miou", "miou13") if k in result}
    run.last_class_iou = dict(zip(result["classes"], result["iou"], strict=True))
    score = result[select]
    if run.record["best_score"] is None or score > run.record["best_score"]:
        run.record.update(best_score=score, best_step=step)
        export(run, "best", step, **run.last_scores, select=select, eval=eval_split(run.config))
    return score


def eval_split(config) -> str:
    """'dataset/size/split' of the validation split (e.g. 'gta5/1280x720/val')."""
    return f"{config.eval.dataset}/{config.eval.size}/{config.eval.split}"


def save_state(run: Run, step: int) -> None:
    """Saves the train state at `step` (asynchronously), refusing a non-finite one."""
    state = run.state
    if not all_finite((state.params, state.batch_stats, state.opt_state)):
        raise TrainingError(
            f"The parameters, BN statistics or optimiser state became non-finite at step "
            f"{step} (the losses so far were finite); stopping without saving them. "
            f"{no_checkpoint_note(run)}"
        )
    run.checkpoints.save(step, state, run.record)


def train_loop(run: Run, signals: preemption.StopSignals) -> tuple[int, int | None]:
    """Trains up to config.train.steps; returns (last step, stop signal or None)."""
    total = run.config.train.steps
    history = MetricHistory()
    bar = tqdm(total=total, initial=run.start_step, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0)  # fmt: skip
    # A signal received while the run was being built stops it before its first step.
    step, stop = run.start_step, signals.requested()
    signals.phase = preemption.TRAINING
    try:
        while step < total and stop is None:
            step += 1
            run.state, metrics = run.step_fn(run.state, *next_batches(run))
            history.append(step, metrics)
            bar.update(1)
            stop = signals.requested()
            due = due_at(step, run.config, stopping=stop is not None)
            if due.log or due.save or due.evaluate:
                log_metrics(run, history, step, bar)
            if due.evaluate:
                validate(run, step)
            if due.save:
                save_state(run, step)
    finally:
        bar.close()
        signals.phase = preemption.FINISHING
    return step, stop


def finish(run: Run, step: int, stop: int | None, facts: dict) -> dict:
    """Exports final/ and writes results.json, or reports the stop; returns the summary."""
    run.checkpoints.wait()
    summary = {
        "workdir": run.workdir,
        "method": run.method.name,
        "group_sizes": run.optimizer.group_sizes,
        "start_step": run.start_step,
        "data": facts,
        "final_step": step,
    }
    if stop is not None:
        if jax.process_index() == 0:
            print(stop_message(run, step, stop), flush=True)
        return dict(summary, stopped_by=preemption.SIGNAL_TEXT[stop], stop_signal=int(stop))
    if run.last_scores is None:  # restarted after its last step: score it all the same
        validate(run, step)
    select = run.config.eval.select
    export(run, "final", step, **run.last_scores, select=select, eval=eval_split(run.config))
    summary.update(
        eval=eval_split(run.config),
        select=select,
        last_miou=run.last_scores["miou"],
        last_scores=run.last_scores,
        last_class_iou=run.last_class_iou,
        best_score=run.record["best_score"],
        best_step=run.record["best_step"],
        best=os.path.join(run.workdir, "best"),
        final=os.path.join(run.workdir, "final"),
    )
    if jax.process_index() == 0:
        # Atomic: a chain of runs (msjax.training.stages) takes this file as "finished".
        path = os.path.join(run.workdir, "results.json")
        outputs.write_text(path, json.dumps(summary, indent=2))
    return summary


def stop_message(run: Run, step: int, stop: int) -> str:
    """The one line a run stopped by a signal prints."""
    by = f"Stopped by {preemption.SIGNAL_TEXT[stop]}"
    again = "Run the same command again to continue."
    if step == run.start_step:  # stopped while the run was being built
        latest = run.checkpoints.latest_step()
        saved = f"its latest checkpoint is step {latest}" if latest else "no checkpoint yet"
        return f"{by} before the first step: nothing new to save ({saved}). {again}"
    return f"{by}: saved step {step} in {run.checkpoints.directory}. {again}"


def describe(run: Run) -> dict:
    """Per stream: data, examples on this host, steps per epoch, epochs the run will see.

    The epoch rule (`run.epoch_steps`): every epoch is a fresh permutation of each split; in
    adaptation both streams turn epochs together, after the shorter split's batches (unless
    config.epochs.shared is False), so the longer stream uses the first batches of each of
    its permutations.
    """
    facts = {}
    for name, stream in run.streams.items():
        cfg = stream.cfg
        facts[name] = dict(
            data=f"{cfg.dataset}/{cfg.size}/{cfg.split}",
            split_this_host=stream.host_split,
            examples_this_host=stream.num_examples,
            steps_per_epoch=stream.steps_per_epoch,
            full_steps_per_epoch=stream.full_steps_per_epoch,
            epochs=round(run.config.train.steps / stream.steps_per_epoch, 2),
        )
    return facts


def announce(run: Run, facts: dict) -> None:
    """Prints what is about to be trained (process 0 only)."""
    if jax.process_index() != 0:
        return
    model, mesh = run.model, run.mesh
    print(
        f"Training {model.num_classes}-class DeepLabV2 (blocks {list(model.blocks)}, width "
        f"{model.width}, BN {model.bn_mode}, {jnp.dtype(model.dtype).name}) on "
        f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s); method "
        f"{run.method.name}; parameters per group {run.optimizer.group_sizes}",
        flush=True,
    )
    if run.method.adapting:
        rule = (
            "both streams restart together after the shorter split's batches"
            if run.config.epochs.shared
            else "each stream cycles its own split (config.epochs.shared=False)"
        )
        print(f"  epochs: {rule}, each with a fresh permutation", flush=True)
    for name, f in facts.items():
        used = f"the first {f['steps_per_epoch']} of {f['full_steps_per_epoch']} batches"
        if f["steps_per_epoch"] == f["full_steps_per_epoch"]:
            used = f"all {f['steps_per_epoch']} batches"
        print(
            f"  {name}: {f['data']}, {f['examples_this_host']} examples on this host, an "
            f"epoch every {f['steps_per_epoch']} steps ({used} of a permutation; "
            f"{f['epochs']} epochs in this run)",
            flush=True,
        )
    ev = run.config.eval
    print(
        f"  validation: {eval_split(run.config)} every {ev.every_steps} steps and at the end; "
        f"best/ keeps the best {ev.select}",
        flush=True,
    )


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Runs (or resumes) the training described by `config` in `workdir`.

    SIGTERM (preemption) or Ctrl-C saves a checkpoint at the current step and returns
    early, with `stopped_by` in the summary; running again continues from there.

    Args:
      config: an experiment config (msjax.configlib fields).
      workdir: the run's folder; if it holds checkpoints, the run resumes from the latest.
      allow_config_change: continue a run in `workdir` although its recorded config differs
        in a field that changes the computation (otherwise that is refused).

    Returns:
      A summary: final step, the validation split, last scores, best score (of
      config.eval.select) and its step, paths of the exported weights.

    Raises:
      msjax.errors.UserError subclasses: problems the user can fix, each naming the file,
        field or step at fault.
    """
    with preemption.StopSignals() as signals, locks.hold(workdir, "workdir", collective=True):
        run = build_run(config, workdir, allow_config_change)
        try:
            facts = describe(run)
            announce(run, facts)
            step, stop = train_loop(run, signals)
            return finish(run, step, stop, facts)
        finally:
            run.close()
