"""Everything one training run needs, built once from its config: the `Run`.

`build_run(config, workdir)` checks the config, prepares the workdir, builds the model
(from converted weights or the original's random initialisation), the optimiser, the train
state (restored from the latest checkpoint when the workdir has one), the data streams, the
jitted step, the validator, the checkpoint manager and the metric writer. The loop
(`msjax.training.loop`) then only uses them. `Run.close()` releases what the run opened, in
a fixed order: data iterators first, then the checkpoint manager (finishing a save under
way), then the metric writer; nothing is left for interpreter shutdown.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from msjax import config_checks, sharding, weights
from msjax.data import synthetic
from msjax.errors import ConfigError, WeightsError
from msjax.models import DeepLabV2
from msjax.training import optim
from msjax.training.checkpoints import RunCheckpoints
from msjax.training.step import TrainState, create_train_state, jit_train_step, make_train_step
from msjax.training.validation import Validator
from msjax.training.workdir import prepare_workdir
from msjax.training.writer import MetricWriter


@dataclasses.dataclass
class Run:
    """One training run's parts; `state` and `record` change as it trains.

    Attributes:
      config, workdir, data_dir, mesh: what and where.
      model, init_meta: the network and the metadata of the weights it started from.
      tx, group_sizes, schedule: the optimiser, its parameter counts per group, the lr.
      state: the current TrainState.
      start_step: the step the run (re)started from.
      record: what the checkpoints carry besides the state (best score and step, shards).
      streams: {'source': ..., ['target': ...]} training streams of this process.
      step_fn: the jitted train step.
      validator: evaluates on config.eval's split.
      checkpoints: the workdir's train states.
      writer: metrics.jsonl and TensorBoard.
      last_scores: the latest validation's {'miou'[, 'miou13']} in this invocation (None
        before one).
      last_class_iou: that validation's IoU per class name (None for a class never seen).
    """

    config: Any
    workdir: str
    data_dir: str
    mesh: Any
    model: DeepLabV2
    init_meta: dict
    tx: Any
    group_sizes: dict
    schedule: Any
    state: TrainState
    start_step: int
    record: dict
    streams: dict
    step_fn: Any
    validator: Validator
    checkpoints: RunCheckpoints
    writer: MetricWriter
    last_scores: dict | None = None
    last_class_iou: dict | None = None

    @property
    def adapting(self) -> bool:
        return "target" in self.streams

    def close(self) -> None:
        """Closes data iterators, then checkpoints (waiting for a save), then the writer."""
        try:
            for stream in self.streams.values():
                stream.close()
            self.checkpoints.close()
        finally:
            self.writer.close()


def model_fields(config, platform: str) -> dict:
    """The DeepLabV2 fields of config.model, for devices of `platform` (the mesh's)."""
    fields = dict(config.model)
    fields["blocks"] = tuple(fields["blocks"])
    fields["dtype"] = jnp.dtype(fields["dtype"])
    fields["platform"] = platform
    return fields


def build_model(config, platform: str):
    """(model, variables, weights metadata) from config.model and config.init.

    `platform` is that of the devices the model will be compiled for (the mesh's).
    """
    fields = model_fields(config, platform)
    if config.init.checkpoint:
        try:
            model, variables = weights.load(config.init.checkpoint, **fields)
        except WeightsError as e:
            raise WeightsError(f"config.init.checkpoint: {e}") from None
        return model, variables, weights.read_metadata(config.init.checkpoint)
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


def data_dir_for(config, workdir: str) -> str:
    """config.data_dir, or WORKDIR/data when every stream reads generated synthetic data."""
    datasets = {config.source.dataset, config.target.dataset, config.eval.dataset}
    synthetic_only = datasets <= set(synthetic.SYNTHETIC_DATASETS)
    if config.data_dir:
        path = os.path.abspath(os.path.expanduser(config.data_dir))
        # Synthetic data is generated on first use; real data must have been prepared.
        if not synthetic_only and not os.path.isdir(path):
            raise ConfigError(
                f"config.data_dir={config.data_dir} does not exist. Prepare the data sets "
                f"there with `python -m msjax.prepare DATASET RAW_DIR --data-dir {path}`."
            )
        return path
    if synthetic_only:
        return os.path.join(workdir, "data")
    raise ConfigError(
        "config.data_dir is empty. Prepare the data sets once with `python -m msjax.prepare "
        "DATASET RAW_DIR --data-dir DATA` and pass --config.data_dir=DATA."
    )


def ensure_synthetic_prepared(config, data_dir: str) -> None:
    """Generates the synthetic data sets a config reads, if they are not prepared yet."""
    from msjax.data import builders
    from msjax.data.preparation import prepare_one

    wanted = {(s.dataset, s.config) for s in (config.source, config.target, config.eval)}
    for dataset, name in sorted(wanted):
        if dataset not in synthetic.SYNTHETIC_DATASETS:
            continue
        if name not in builders.prepared_configs(dataset, data_dir):
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
        raise ConfigError(
            f"config.data_shards={config.data_shards} (so {shards} shards) must be a positive "
            f"multiple of the number of processes ({jax.process_count()}) that divides "
            f"config.batch_pairs={config.batch_pairs}."
        )
    return shards


def epoch_steps(config, full: dict) -> dict:
    """Steps per epoch of each training stream: the original's rule (docs/data.md).

    Args:
      config: the experiment config (config.epochs).
      full: stream name -> batches of a full pass over its split.

    Returns:
      stream name -> steps per epoch. Adapting with `epochs.shared`: the shorter stream's
      full pass for both (the original zips its two loaders: both restart, each with a fresh
      permutation, when the shorter ends). Source-only: at most
      `epochs.source_only_max_steps` (the original's ITER_MAX; 0: no limit).
    """
    if "target" in full:
        if config.epochs.shared:
            return dict.fromkeys(full, min(full.values()))
        return dict(full)
    cap = config.epochs.source_only_max_steps
    return {name: min(steps, cap) if cap else steps for name, steps in full.items()}


def make_streams(config, data_dir: str, normalization: str, shards: int, start: int) -> dict:
    """This process's training streams: 'source', and 'target' when a target loss is set."""
    from msjax.data.pipeline import full_epoch_steps, make_sharded_train_stream

    def fields(stream, seed):
        cfg = {k: v for k, v in stream.items() if v is not None}
        cfg.update(
            batch_size=config.batch_pairs // shards,  # one data shard's share of the batch
            seed=seed,
            num_classes=config.model.num_classes,
            normalization=normalization,
            data_dir=data_dir,
        )
        return cfg

    cfgs = {"source": fields(config.source, config.seed)}
    if config.loss.target != "none":
        cfgs["target"] = fields(config.target, config.seed + 1)
    steps = epoch_steps(config, {k: full_epoch_steps(c, shards) for k, c in cfgs.items()})
    streams = {}
    try:
        for name, cfg in cfgs.items():
            streams[name] = make_sharded_train_stream(
                cfg, shards=shards, start_step=start, epoch_steps=steps[name]
            )
    except BaseException:
        for stream in streams.values():
            stream.close()
        raise
    return streams


def make_optimizer(config, model: DeepLabV2, params):
    """(tx, parameters per group, lr schedule) of config.optim for this model and loss."""
    rules = config.optim.rules
    if rules == "faithful":
        rules = optim.faithful_rules(
            aspp_branches=model.aspp_branches, aux_head_trained=config.loss.multi_level
        )
    tx, group_sizes = optim.make_optimizer({**config.optim, "rules": rules}, params)
    schedule = optim.poly_schedule(config.optim.lr, config.optim.iter_max, config.optim.poly_power)
    return tx, group_sizes, schedule


def restore_or_init(config, checkpoints: RunCheckpoints, variables, tx, mesh):
    """(state, start step, record): the latest checkpoint's, or a fresh state at step 0."""
    repl = sharding.replicated(mesh)
    # Jitted: an eager tx.init compiles one kernel per parameter shape (slow on GPUs).
    state = jax.jit(lambda v: create_train_state(v, tx), out_shardings=repl)(variables)
    record = {"best_score": None, "best_step": None}
    start = checkpoints.latest_step() or 0
    if start:
        state, record = checkpoints.restore(state, start)
        record.setdefault("best_score", record.pop("best_miou", None))  # older records
        print(f"Resuming {checkpoints.directory} from step {start}.", flush=True)
    shards = data_shards(config)
    if record.get("data_shards", shards) != shards and jax.process_index() == 0:
        print(
            f"warning: this run was started with {record['data_shards']} data shards and "
            f"continues with {shards}: the data order changes. Set "
            f"--config.data_shards={record['data_shards']} to keep it.",
            flush=True,
        )
    record["data_shards"] = shards
    return state, start, record


def build_run(config, workdir: str, allow_config_change: bool = False) -> Run:
    """Checks `config` and builds the Run it describes in `workdir` (see the module doc)."""
    config_checks.check_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    mesh = sharding.make_mesh()
    sharding.check_global_batch(config.batch_pairs, mesh)
    data_shards(config)
    prepare_workdir(workdir, config, allow_config_change)
    data_dir = data_dir_for(config, workdir)
    ensure_synthetic_prepared(config, data_dir)
    model, variables, init_meta = build_model(config, sharding.platform(mesh))
    tx, group_sizes, schedule = make_optimizer(config, model, variables["params"])
    step_fn = jit_train_step(
        make_train_step(model, tx, config.loss), mesh, adapting=config.loss.target != "none"
    )
    checkpoints = RunCheckpoints(workdir, keep=config.train.keep_checkpoints)
    opened = [checkpoints]  # closed again, in order, if a later part cannot be built
    try:
        state, start, record = restore_or_init(config, checkpoints, variables, tx, mesh)
        norm = init_meta["input_normalization"]
        streams = make_streams(config, data_dir, norm, record["data_shards"], start)
        opened[:0] = streams.values()
        validator = Validator(model, config, data_dir, norm, mesh)
        writer = MetricWriter(workdir, tensorboard=config.train.tensorboard, start_step=start)
    except BaseException:
        for part in opened:
            part.close()
        raise
    return Run(
        config, workdir, data_dir, mesh, model, init_meta, tx, group_sizes, schedule,
        state, start, record, streams, step_fn, validator, checkpoints, writer,
    )  # fmt: skip


def describe(run: Run) -> dict:
    """Per stream: data, examples on this host, steps per epoch, epochs the run will see.

    The epoch rule (`epoch_steps`): every epoch is a fresh permutation of each split; in
    adaptation both streams turn epochs together, after the shorter split's batches (unless
    config.epochs.shared is False), so the longer stream uses the first batches of each of
    its permutations.
    """
    facts = {}
    for name, stream in run.streams.items():
        cfg = stream.cfg
        facts[name] = dict(
            data=f"{cfg.dataset}/{cfg.config}/{cfg.split}",
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
        f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s); "
        f"loss {run.config.loss.target}; parameters per group {run.group_sizes}",
        flush=True,
    )
    if run.adapting:
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
        f"  validation: {ev.dataset}/{ev.config}/{ev.split} every {ev.every_steps} steps and at "
        f"the end; best/ keeps the best {ev.select}",
        flush=True,
    )


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
        "initialised_from": init_meta.get("source", init_meta.get("layout")),
        **run_facts,
    }
