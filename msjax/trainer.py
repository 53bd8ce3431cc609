"""`train_and_evaluate(config, workdir)`: one training run, resumable, sharded over all devices.

Starting again with the same workdir resumes from its latest checkpoint, with the same data
order. The run writes
WORKDIR/config.json, metrics.jsonl, tensorboard/, checkpoints/ (train states), best/ and
final/ (weights folders for msjax.evaluate, msjax.predict and config.init.checkpoint) and
results.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from msjax import optim, sharding, weights
from msjax.checkpoint import RunCheckpoints, export_weights
from msjax.metric_writer import MetricWriter
from msjax.models import DeepLabV2
from msjax.preemption import PreemptionSignal
from msjax.prepare import SYNTHETIC
from msjax.train_step import TrainState, create_train_state, make_train_step
from msjax.validation import Validator
from msjax.workdir import prepare_workdir


class TrainingError(RuntimeError):
    """A run that cannot start or must stop; the message says why and where."""


def build_model(config):
    """(model, variables, weights metadata) from config.model and config.init."""
    fields = dict(config.model)
    fields["blocks"] = tuple(fields["blocks"])
    fields["dtype"] = jnp.dtype(fields["dtype"])
    if config.init.checkpoint:
        try:
            model, variables = weights.load(config.init.checkpoint, **fields)
        except weights.WeightsError as e:
            raise weights.WeightsError(f"config.init.checkpoint: {e}") from None
        metadata = weights.read_metadata(config.init.checkpoint)
        return model, variables, metadata
    model = DeepLabV2(**fields)
    variables = jax.jit(
        lambda: model.init(jax.random.key(config.seed), jnp.zeros((1, 33, 33, 3)), train=False)
    )()
    metadata = {
        "layout": "random-init",
        "input_normalization": config.init.normalization,
        "heads": f"fresh (seed {config.seed})",
    }
    return model, variables, metadata


def weights_metadata(model: DeepLabV2, init_meta, **run_facts) -> dict:
    """Metadata of an exported weights folder (same format as msjax.convert writes)."""
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
        "initialised_from": init_meta.get("source", init_meta.get("layout")),
        **run_facts,
    }


def data_dir_for(config, workdir: str) -> str:
    """config.data_dir, or WORKDIR/data when every stream reads generated synthetic data."""
    datasets = {config.source.dataset, config.target.dataset, config.eval.dataset}
    synthetic_only = datasets <= set(SYNTHETIC)
    if config.data_dir:
        path = os.path.abspath(os.path.expanduser(config.data_dir))
        # Synthetic data is generated on first use; real data must have been prepared.
        if not synthetic_only and not os.path.isdir(path):
            raise TrainingError(
                f"config.data_dir={config.data_dir} does not exist. Prepare the data sets "
                f"there with `python -m msjax.prepare DATASET RAW_DIR --data-dir {path}`."
            )
        return path
    if synthetic_only:
        return os.path.join(workdir, "data")
    raise TrainingError(
        "config.data_dir is empty. Prepare the data sets once with `python -m msjax.prepare "
        "DATASET RAW_DIR --data-dir DATA` and pass --config.data_dir=DATA."
    )


def ensure_synthetic_prepared(config, data_dir: str) -> None:
    """Generates the synthetic data sets a config reads, if they are not prepared yet."""
    from msjax.data import builders
    from msjax.prepare import prepare_one

    wanted = {(s.dataset, s.config) for s in (config.source, config.target, config.eval)}
    for dataset, name in sorted(wanted):
        if dataset in SYNTHETIC and name not in builders.prepared_configs(dataset, data_dir):
            if jax.process_index() == 0:
                print(f"Generating {dataset} {name} into {data_dir} (once) ...", flush=True)
                prepare_one(dataset, name, data_dir, progress=True)
    if jax.process_count() > 1:  # the other processes read what process 0 wrote
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("msjax: synthetic data prepared")


def data_shards(config) -> int:
    """How many slices the training splits are cut into (config.data_shards, 0: processes)."""
    shards = config.data_shards or jax.process_count()
    if shards < 1 or shards % jax.process_count() or config.batch_pairs % shards:
        raise TrainingError(
            f"config.data_shards={config.data_shards} (so {shards} shards) must be a positive "
            f"multiple of the number of processes ({jax.process_count()}) that divides "
            f"config.batch_pairs={config.batch_pairs}."
        )
    return shards


def stream_config(
    config, stream, data_dir: str, normalization: str, seed: int, shards: int
) -> dict:
    """DataConfig fields of one stream (batch_size: one data shard's share of the batch)."""
    fields = {k: v for k, v in stream.items() if v is not None}
    fields.update(
        batch_size=config.batch_pairs // shards,
        seed=seed,
        num_classes=config.model.num_classes,
        normalization=normalization,
        data_dir=data_dir,
    )
    return fields


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


def describe_streams(config, streams: dict) -> dict:
    """Per stream: examples on this host, steps per epoch, epochs the run will see.

    The epoch rule: every stream cycles through its own split on its own; a step never waits
    for another stream. With fewer target than source examples, the target stream simply
    starts its next (reshuffled) epoch sooner.
    """
    facts = {}
    for name, stream in streams.items():
        cfg = stream.cfg
        facts[name] = dict(
            data=f"{cfg.dataset}/{cfg.config}/{cfg.split}",
            split_this_host=stream.host_split,
            examples_this_host=stream.num_examples,
            steps_per_epoch=stream.steps_per_epoch,
            epochs=round(config.train.steps / stream.steps_per_epoch, 2),
        )
    return facts


@jax.jit
def _leaves_finite(leaves):
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def all_finite(tree) -> bool:
    """True when every floating-point leaf of `tree` is finite (one jitted reduction)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(_leaves_finite(leaves))


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Runs (or resumes) the training described by `config` in `workdir`.

    SIGTERM (preemption) saves a checkpoint at the current step and returns early, with
    `preempted` in the summary; running again continues from there.

    Args:
      config: an experiment config (msjax.configlib fields).
      workdir: the run's folder; if it holds checkpoints, the run resumes from the latest.
      allow_config_change: continue a run in `workdir` although its recorded config differs
        in a field that changes the computation (otherwise that is refused).

    Returns:
      A summary: final step, last and best target mIoU, paths of the exported weights.

    Raises:
      TrainingError, and the ValueErrors CheckpointError, WorkdirError, DataError and
        WeightsError: user-facing problems, each naming the file, field or step at fault.
    """
    from msjax.data.pipeline import make_sharded_train_stream

    workdir = os.path.abspath(os.path.expanduser(workdir))
    mesh = sharding.make_mesh()
    sharding.check_global_batch(config.batch_pairs, mesh)
    prepare_workdir(workdir, config, allow_config_change)
    data_dir = data_dir_for(config, workdir)
    ensure_synthetic_prepared(config, data_dir)

    model, variables, init_meta = build_model(config)
    rules = config.optim.rules
    if rules == "faithful":
        rules = optim.faithful_rules(
            aspp_branches=model.aspp_branches, aux_head_trained=config.loss.multi_level
        )
    tx, group_sizes = optim.make_optimizer({**config.optim, "rules": rules}, variables["params"])
    repl = sharding.replicated(mesh)
    # Jitted: an eager tx.init compiles one kernel per parameter shape (~50 s on an H100).
    state = jax.jit(lambda v: create_train_state(v, tx), out_shardings=repl)(variables)
    del variables

    ckpts = RunCheckpoints(workdir, keep=config.train.keep_checkpoints)
    record = {"best_miou": None, "best_step": None}
    start = ckpts.latest_step() or 0
    if start:
        state, record = ckpts.restore(state, start)
        print(f"Resuming {workdir} from step {start}.", flush=True)

    norm = init_meta["input_normalization"]
    shards = data_shards(config)
    if record.get("data_shards", shards) != shards and jax.process_index() == 0:
        print(
            f"warning: this run was started with {record['data_shards']} data shards and "
            f"continues with {shards}: the data order changes. Set "
            f"--config.data_shards={record['data_shards']} to keep it.",
            flush=True,
        )
    record["data_shards"] = shards
    streams = {
        "source": make_sharded_train_stream(
            stream_config(config, config.source, data_dir, norm, config.seed, shards),
            shards=shards,
            start_step=start,
        )
    }
    adapting = config.loss.target != "none"
    if adapting:
        streams["target"] = make_sharded_train_stream(
            stream_config(config, config.target, data_dir, norm, config.seed + 1, shards),
            shards=shards,
            start_step=start,
        )
    validator = Validator(model, config, data_dir, norm, mesh)

    batch = sharding.batch_sharded(mesh)
    step_fn = jax.jit(
        make_train_step(model, tx, config.loss),
        in_shardings=(repl, batch, batch if adapting else None, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    schedule = optim.poly_schedule(config.optim.lr, config.optim.iter_max, config.optim.poly_power)
    rng = jax.random.key(config.seed)
    total = config.train.steps
    summary = {
        "workdir": workdir,
        "group_sizes": group_sizes,
        "start_step": start,
        "data": describe_streams(config, streams),
    }
    if jax.process_index() == 0:
        print(
            f"Training {model.num_classes}-class DeepLabV2 (blocks {list(model.blocks)}, width "
            f"{model.width}, BN {model.bn_mode}, {jnp.dtype(model.dtype).name}) on "
            f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s); "
            f"loss {config.loss.target}; parameters per group {group_sizes}",
            flush=True,
        )
        for name, facts in summary["data"].items():
            print(
                f"  {name}: {facts['data']}, {facts['examples_this_host']} examples on this "
                f"host, an epoch every {facts['steps_per_epoch']} steps ({facts['epochs']} "
                "epochs in this run; each stream repeats on its own)",
                flush=True,
            )

    def export(folder: str, state: TrainState, step: int, **facts) -> None:
        path = os.path.join(workdir, folder)
        try:
            export_weights(
                path,
                state.params,
                state.batch_stats,
                weights_metadata(model, init_meta, step=step, **facts),
            )
        except Exception as e:
            raise TrainingError(
                f"Could not write the {folder} weights of step {step} to {path}: {e}. "
                f"Any earlier {path} is intact; the train states are in {ckpts.directory}."
            ) from e

    def evaluate(step: int, state: TrainState) -> float:
        result = validator.run(state.params, state.batch_stats, step, writer)
        miou = result["miou"]
        if record["best_miou"] is None or miou > record["best_miou"]:
            record.update(best_miou=miou, best_step=step)
            evaluated = f"{config.eval.dataset}/{config.eval.config}/{config.eval.split}"
            export("best", state, step, miou=miou, eval=evaluated)
        summary["last_miou"] = miou
        return miou

    def save(step: int, state: TrainState) -> None:
        if not all_finite((state.params, state.batch_stats, state.opt_state)):
            raise TrainingError(
                f"The parameters, BN statistics or optimiser state became non-finite at step "
                f"{step} (the losses so far were finite); stopping without saving them. The "
                f"last good checkpoint (step {ckpts.latest_step()}) in {ckpts.directory} is "
                "intact."
            )
        ckpts.save(step, state, record)

    writer = MetricWriter(workdir, tensorboard=config.train.tensorboard, start_step=start)
    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    history = MetricHistory()
    step = start
    preempted = False
    with contextlib.ExitStack() as cleanup, PreemptionSignal() as preemption:
        # On any exit, a save already under way is finished: nothing good is lost.
        cleanup.callback(writer.close)
        cleanup.callback(ckpts.close)
        cleanup.callback(bar.close)
        while step < total:
            s = sharding.to_global(next(streams["source"]), mesh)
            t = None
            if adapting:
                t = sharding.to_global({"image": next(streams["target"])["image"]}, mesh)
            state, metrics = step_fn(state, s, t, rng)
            step += 1
            history.append(step, metrics)
            bar.update(1)
            preempted = preemption.requested()
            log_now = step % config.train.log_every == 0 or step == total
            save_now = step % config.train.checkpoint_every == 0 or step == total or preempted
            eval_now = (step % config.eval.every_steps == 0 or step == total) and not preempted
            if log_now or save_now or eval_now:
                mean, bad = history.fetch()
                if bad:
                    ckpts.wait()
                    raise TrainingError(
                        f"Non-finite {bad[1]} at step {bad[0]}; stopping. The last good "
                        f"checkpoint (step {ckpts.latest_step()}) in {ckpts.directory} is "
                        "intact."
                    )
                mean["lr"] = float(schedule(step - 1))
                writer.scalars(step, mean)
                bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean['lr']:.2e}")
            if eval_now:
                evaluate(step, state)
            if save_now:
                save(step, state)
            if preempted:
                break
        ckpts.wait()
        if preempted:
            bar.close()
            if jax.process_index() == 0:
                print(
                    f"Preempted (SIGTERM): saved step {step} in {ckpts.directory}. Run the same "
                    "command again to continue.",
                    flush=True,
                )
            summary.update(final_step=step, preempted=True)
            return summary
        if "last_miou" not in summary:  # restarted after its last step: score it all the same
            evaluate(step, state)
        export("final", state, step, miou=summary.get("last_miou"))
    summary.update(
        final_step=step,
        best_miou=record["best_miou"],
        best_step=record["best_step"],
        best=os.path.join(workdir, "best"),
        final=os.path.join(workdir, "final"),
    )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
