"""Everything one training run needs, built once from its config: the `Run`.

`build_run(config, workdir)` checks the config, prepares the workdir, and builds, in this
order: the device mesh, the model (from converted weights or the original's random
initialisation) for the mesh's platform, the optimiser, the train state (restored from the
latest checkpoint when the workdir has one), the data streams, the jitted step, the
validator and the metric writer. The loop (`msjax.training.loop`) then only uses them.
`Run.close()` releases what the run opened, in a fixed order: data iterators first, then
the checkpoint manager (finishing a save under way), then the metric writer.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from msjax import config_checks, methods, optim, sharding, weights
from msjax.data import datasets
from msjax.errors import WeightsError
from msjax.methods import Method
from msjax.models import DeepLabV2
from msjax.training.checkpoints import RunCheckpoints
from msjax.training.step import TrainState, create_train_state, jit_train_step, make_train_step
from msjax.training.validation import Validator
from msjax.training.workdir import prepare_workdir
from msjax.training.writer import MetricWriter


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optimiser of a run: the transformation, parameters per group, the base lr."""

    tx: Any
    group_sizes: dict
    schedule: Any  # step -> the backbone's learning rate (the heads' is a multiple)


@dataclasses.dataclass(kw_only=True)
class Run:
    """One training run's parts; `state`, `record` and the last scores change as it trains.

    Attributes:
      config, method, workdir, data_dir, mesh: what and where.
      model, init_meta: the network and the metadata of the weights it started from.
      optimizer: see `Optimizer`.
      state, start_step: the current TrainState; the step the run (re)started from.
      record: what the checkpoints carry besides the state (best score and step, shards).
      streams: {'source': ..., ['target': ...]} training streams of this process.
      step_fn: the jitted train step.
      validator, checkpoints, writer: validation, train states, metrics.jsonl + TensorBoard.
      last_scores, last_class_iou: the latest validation's {'miou'[, 'miou13']} and IoU per
        class name in this invocation (None before one).
    """

    config: Any
    method: Method
    workdir: str
    data_dir: str
    mesh: Any
    model: DeepLabV2
    init_meta: dict
    optimizer: Optimizer
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


def build_optimizer(config, model: DeepLabV2, method: Method, params) -> Optimizer:
    """config.optim for this model and method ('faithful' rules resolved, optim.py)."""
    rules = optim.resolve_rules(
        config.optim.rules, aspp_branches=model.aspp_branches, aux_head_trained=method.multi_level
    )
    tx, group_sizes = optim.make_optimizer({**config.optim, "rules": rules}, params)
    return Optimizer(tx, group_sizes, optim.schedule(config.optim.lr, config.optim))


def data_dir_for(config, workdir: str) -> str:
    """config.data_dir, or WORKDIR/data when every stream reads generated data."""
    generated = all(
        datasets.get(s.dataset).generated for s in (config.source, config.target, config.eval)
    )
    path = os.path.abspath(os.path.expanduser(config.data_dir)) if config.data_dir else ""
    config_checks.check_data_dir(config, path, generated)
    return path or os.path.join(workdir, "data")


def ensure_generated_prepared(config, data_dir: str) -> None:
    """Generates the synthetic data sets a config reads, if they are not prepared yet."""
    from msjax.data import builders
    from msjax.data.preparation import prepare_one

    wanted = {(s.dataset, s.size) for s in (config.source, config.target, config.eval)}
    for dataset, size in sorted(wanted):
        if not datasets.get(dataset).generated:
            continue
        if size not in builders.prepared_sizes(dataset, data_dir):
            if jax.process_index() == 0:
                print(f"Generating {dataset} {size} into {data_dir} (once) ...", flush=True)
                prepare_one(dataset, size, data_dir, progress=True)
    if jax.process_count() > 1:  # the other processes read what process 0 wrote
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("msjax: synthetic data prepared")


def check_prepared(config, method: Method, data_dir: str) -> None:
    """Raises DataError naming the first stream or validation split whose data is not prepared.

    Before the model is built, so that a missing data set costs no compilation.
    """
    from msjax.data import builders

    sections = [config.source, config.eval] + ([config.target] if method.adapting else [])
    for section in sections:
        builders.load_builder(section.dataset, section.size, data_dir)


def data_shards(config) -> int:
    """How many slices the training splits are cut into (config.data_shards, 0: processes)."""
    return config.data_shards or jax.process_count()


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


def make_streams(config, adapting: bool, data_dir: str, normalization: str, shards: int,
                 start: int) -> dict:  # fmt: skip
    """This process's training streams: 'source', and 'target' when the method adapts."""
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
    if adapting:
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
    method = methods.get(config.method)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    mesh = sharding.make_mesh()
    config_checks.check_devices(config, mesh)
    prepare_workdir(workdir, config, allow_config_change)
    data_dir = data_dir_for(config, workdir)
    ensure_generated_prepared(config, data_dir)
    check_prepared(config, method, data_dir)
    model, variables, init_meta = build_model(config, sharding.platform(mesh))
    optimizer = build_optimizer(config, model, method, variables["params"])
    step_fn = jit_train_step(
        make_train_step(model, optimizer.tx, method, config.loss), mesh, adapting=method.adapting
    )
    checkpoints = RunCheckpoints(workdir, keep=config.train.keep_checkpoints)
    opened = [checkpoints]  # closed again, in order, if a later part cannot be built
    try:
        state, start, record = restore_or_init(config, checkpoints, variables, optimizer.tx, mesh)
        norm = init_meta["input_normalization"]
        streams = make_streams(
            config, method.adapting, data_dir, norm, record["data_shards"], start
        )
        opened[:0] = streams.values()
        validator = Validator(model, config, data_dir, norm, mesh)
        writer = MetricWriter(workdir, tensorboard=config.train.tensorboard, start_step=start)
    except BaseException:
        for part in opened:
            part.close()
        raise
    return Run(
        config=config, method=method, workdir=workdir, data_dir=data_dir, mesh=mesh,
        model=model, init_meta=init_meta, optimizer=optimizer, state=state, start_step=start,
        record=record, streams=streams, step_fn=step_fn, validator=validator,
        checkpoints=checkpoints, writer=writer,
    )  # fmt: skip
