"""`train_and_evaluate(config, workdir)`: one training run, resumable, sharded over all devices.

Starting again with the same workdir resumes from its latest checkpoint, with the same data
order. The run writes
WORKDIR/config.json, metrics.jsonl, tensorboard/, checkpoints/ (train states), best/ and
final/ (weights folders for msjax.evaluate, msjax.predict and config.init.checkpoint) and
results.json.
"""

from __future__ import annotations

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
from msjax.prepare import SYNTHETIC
from msjax.train_step import TrainState, create_train_state, make_train_step
from msjax.validation import Validator


class TrainingError(RuntimeError):
    """A run that cannot start or must stop; the message says why and where."""


def build_model(config):
    """(model, variables, weights metadata) from config.model and config.init."""
    fields = dict(config.model)
    fields["blocks"] = tuple(fields["blocks"])
    fields["dtype"] = jnp.dtype(fields["dtype"])
    if config.init.checkpoint:
        model, variables = weights.load(config.init.checkpoint, **fields)
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
    if config.data_dir:
        return os.path.abspath(os.path.expanduser(config.data_dir))
    datasets = {config.source.dataset, config.target.dataset, config.eval.dataset}
    if datasets <= set(SYNTHETIC):
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


def check_workdir(workdir: str, config) -> None:
    """Creates the workdir and records the config; warns if it holds another config's run."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise TrainingError(f"workdir {workdir} is not writable: {e}") from None
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            previous = f.read()
        if previous != text:
            print(f"warning: {path} differs from this run's config; resuming anyway.", flush=True)
            path = os.path.join(workdir, f"config.{int(time.time())}.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            f.write(text + "\n")


def stream_config(config, stream, data_dir: str, normalization: str, seed: int) -> dict:
    """DataConfig fields of one stream (this host's share of the global batch)."""
    fields = {k: v for k, v in stream.items() if v is not None}
    fields.update(
        batch_size=config.batch_pairs // jax.process_count(),
        seed=seed,
        num_classes=config.model.num_classes,
        normalization=normalization,
        data_dir=data_dir,
    )
    return fields


def first_non_finite(history) -> tuple[int, str] | None:
    """(step, metric name) of the first non-finite metric in [(step, {name: value})]."""
    for step, values in history:
        for name, value in values.items():
            if not np.isfinite(value):
                return step, name
    return None


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs (or resumes) the training described by `config` in `workdir`.

    Returns:
      A summary: final step, last and best target mIoU, paths of the exported weights.
    """
    from msjax.data.pipeline import make_train_stream

    workdir = os.path.abspath(os.path.expanduser(workdir))
    check_workdir(workdir, config)
    mesh = sharding.make_mesh()
    sharding.check_global_batch(config.batch_pairs, mesh)
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
    source = make_train_stream(
        stream_config(config, config.source, data_dir, norm, config.seed), start_step=start
    )
    adapting = config.loss.target != "none"
    target = None
    if adapting:
        target = make_train_stream(
            stream_config(config, config.target, data_dir, norm, config.seed + 1),
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
    writer = MetricWriter(workdir, tensorboard=config.train.tensorboard)
    rng = jax.random.key(config.seed)
    total = config.train.steps
    summary = {"workdir": workdir, "group_sizes": group_sizes, "start_step": start}
    if jax.process_index() == 0:
        print(
            f"Training {model.num_classes}-class DeepLabV2 (blocks {list(model.blocks)}, width "
            f"{model.width}, BN {model.bn_mode}, {jnp.dtype(model.dtype).name}) on "
            f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s); "
            f"loss {config.loss.target}; parameters per group {group_sizes}",
            flush=True,
        )

    def evaluate(step: int, state: TrainState) -> float:
        result = validator.run(state.params, state.batch_stats, step, writer)
        miou = result["miou"]
        if record["best_miou"] is None or miou > record["best_miou"]:
            record.update(best_miou=miou, best_step=step)
            export_weights(
                os.path.join(workdir, "best"),
                state.params,
                state.batch_stats,
                weights_metadata(
                    model,
                    init_meta,
                    step=step,
                    miou=miou,
                    eval=f"{config.eval.dataset}/{config.eval.config}/{config.eval.split}",
                ),
            )
        summary["last_miou"] = miou
        return miou

    history = []  # (step, metrics on device) since the last log
    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    step = start
    t_log = time.perf_counter()
    while step < total:
        s = sharding.to_global(next(source), mesh)
        t = sharding.to_global({"image": next(target)["image"]}, mesh) if adapting else None
        state, metrics = step_fn(state, s, t, rng)
        step += 1
        history.append((step, metrics))
        bar.update(1)
        log_now = step % config.train.log_every == 0 or step == total
        save_now = step % config.train.checkpoint_every == 0 or step == total
        eval_now = step % config.eval.every_steps == 0 or step == total
        if log_now or save_now or eval_now:
            fetched = [(k, {n: float(v) for n, v in jax.device_get(m).items()}) for k, m in history]
            history.clear()
            bad = first_non_finite(fetched)
            if bad:
                bar.close()
                ckpts.wait()
                raise TrainingError(
                    f"Non-finite {bad[1]} at step {bad[0]}; stopping. The last good checkpoint "
                    f"(step {ckpts.latest_step()}) in {ckpts.directory} is intact."
                )
            mean = {n: float(np.mean([v[n] for _, v in fetched])) for n in fetched[-1][1]}
            mean["lr"] = float(schedule(step - 1))
            elapsed = time.perf_counter() - t_log
            mean["steps_per_sec"] = len(fetched) / max(elapsed, 1e-9)
            t_log = time.perf_counter()
            writer.scalars(step, mean)
            bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean['lr']:.2e}")
        if eval_now:
            evaluate(step, state)
        if save_now:
            ckpts.save(step, state, record)
    bar.close()
    if "last_miou" not in summary:  # restarted after its last step: score it all the same
        evaluate(step, state)
    ckpts.wait()
    export_weights(
        os.path.join(workdir, "final"),
        state.params,
        state.batch_stats,
        weights_metadata(model, init_meta, step=step, miou=summary.get("last_miou")),
    )
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
    writer.close()
    ckpts.close()
    return summary
