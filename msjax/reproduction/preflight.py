r"""A preflight of a paper row: every stage of its chain for a few steps, at the real sizes.

    python -m msjax.reproduce gta2city:iw_multi --gta5 RAW --cityscapes RAW --workdir W \
        --preflight [--preflight-steps 3] [--preflight-images 2] [--preflight-model tiny]

takes the arguments of the real reproduction and, before hours of data preparation and days
of training, runs what the real one would run: each stage's own config (model, crop sizes,
losses), built by the trainer's own `build_run`, its jitted step lowered and compiled, then
a few steps on the row's data; a few images of each stage's validation split through the
run's own validator; and a few images of the row's target under every protocol with and
without flip (`msjax.evaluation.protocol.evaluate`). It reports per stage the batch shapes,
compile time, step time (the first step is not timed), peak memory, and the full stage's
projected wall time: steps x step time + validations x images x time per image.

Everything it writes is under WORKDIR/preflight/ROW/ (replaced by each preflight):

    data/        each (data set, size) the row reads: a link to it where it is prepared in
                 the data folder (read, never written), else a subset of a few examples per
                 split prepared from the raw folder (`prepare_one(max_examples=...)`)
    STAGE/       the stage's scratch run (config.json, metrics.jsonl, weights/)
    preflight.json, preflight.md

Nothing a real run trusts is written: no chain folder (WORKDIR/SETTING/STAGE), no report,
nothing in the data folder, so a real reproduction after a preflight is the same as without
one. `--preflight-model tiny` swaps in the smoke runs' tiny DeepLabV2 (random weights): it
checks the data and the shapes only, its times say nothing of the real model's.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import shutil
import sys
import time

from msjax import configlib, methods
from msjax.data import builders, datasets
from msjax.errors import ConfigError
from msjax.reproduction import data, scoring
from msjax.reproduction.plan import Plan
from msjax.reproduction.preflight_report import device_facts, markdown, write

MODELS = ("real", "tiny")
WEIGHTS = "weights"  # a stage's exported weights, in its scratch folder


@dataclasses.dataclass(frozen=True)
class Options:
    """How much a preflight runs.

    Attributes:
      steps: training steps per stage; the first is not timed (a warm-up after compiling).
      images: images per evaluation (each stage's validation, each protocol); the first
        batch compiles.
      model: 'real' (the stage configs' model) or 'tiny' (data and shapes only).
    """

    steps: int = 3
    images: int = 2
    model: str = "real"


def make_options(steps=None, images=None, model=None) -> Options:
    """Options from the command line's values (None: the default); ConfigError naming the flag."""
    default = Options()
    options = Options(
        default.steps if steps is None else steps,
        default.images if images is None else images,
        model or default.model,
    )
    for flag, value in (("steps", options.steps), ("images", options.images)):
        if not isinstance(value, int) or value < 2:
            raise ConfigError(
                f"--preflight-{flag} {value}: must be an integer >= 2 (the first one compiles "
                "and is not timed)."
            )
    if options.model not in MODELS:
        raise ConfigError(f"--preflight-model {options.model!r}: valid: {', '.join(MODELS)}.")
    return options


def folder(plan: Plan) -> str:
    """WORKDIR/preflight/ROW: all a preflight writes."""
    return os.path.join(plan.workdir, "preflight", plan.row.slug)


def clear(path: str) -> None:
    """Removes an earlier preflight's folder; its links into the data folder are unlinked,
    never followed."""
    if os.path.isdir(path):
        shutil.rmtree(path)  # rmtree unlinks symbolic links, it does not descend into them


# ---- data --------------------------------------------------------------------------------


def wanted(plan: Plan) -> list[tuple[str, str]]:
    """Every (data set, size) the row reads, and its target's full-size labels."""
    pairs = set(data.needed(plan))
    if not plan.row.smoke:
        full = data.eval_setting(plan, "full")
        pairs.add((full.dataset.name, full.label_size))
    return sorted(pairs)


def make_data(plan: Plan, raw_dirs: dict, data_dir: str, examples: int, progress: bool):
    """Fills the preflight's data folder; returns where each (data set, size) came from.

    Prepared data is linked (read where it is); the rest is prepared as a subset from its
    raw folder (or generated). Only the full-size labels may be neither: `data.check_raw`
    has checked that every other missing one has its raw folder.
    """
    found = []
    for dataset, size in wanted(plan):
        entry = datasets.get(dataset)
        raw = None if entry.generated else raw_dirs.get(entry.raw.flag)
        fact = dict(dataset=dataset, size=size)
        if size in builders.prepared_sizes(dataset, plan.data_dir):
            link = builders.prepared_path(dataset, size, data_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(builders.prepared_path(dataset, size, plan.data_dir), link)
            fact["source"] = f"prepared in {plan.data_dir} (read there)"
        elif entry.generated or raw:
            fact.update(_subset(dataset, size, data_dir, raw, examples, progress))
        else:
            flag = f"--{entry.raw.flag}"
            fact["source"] = None
            fact["note"] = f"not prepared and no {flag}: the full protocol is not exercised"
        found.append(fact)
    return found


def _subset(dataset, size, data_dir, raw, examples: int, progress: bool) -> dict:
    """Prepares `examples` per split of one (data set, size); returns what it saw."""
    from msjax.data.preparation import prepare_one

    origin = "generated" if raw is None else f"from {raw}"
    print(f"Preparing {examples} examples per split of {dataset} {size} {origin} ...", flush=True)
    # skip_bad: the subset is taken from what is on disk; what the real preparation would
    # stop on (listed pairs missing, unreadable files) is counted and reported instead.
    summary = prepare_one(dataset, size, data_dir, raw_dir=raw, max_examples=examples,
                          skip_bad=True, progress=progress)  # fmt: skip
    skipped = collections.Counter(reason for _, reason in summary["skipped"])
    raw_sizes = summary["raw_sizes"].most_common()
    return dict(
        source=f"subset of {examples} per split {origin}",
        splits=summary["splits"],
        skipped=dict(skipped),
        raw_sizes={f"{w}x{h}": n for (w, h), n in raw_sizes},
    )


def split_images(dataset: str, size: str, split: str, data_dir: str) -> tuple[int, str]:
    """(examples of a split in the real run, where that count comes from)."""
    entry = datasets.get(dataset)
    if size in builders.prepared_sizes(dataset, data_dir):
        info = builders.load_builder(dataset, size, data_dir).info
        return info.splits[split].num_examples, "prepared"
    if entry.generated:
        return builders.SYNTHETIC_COUNTS[split], "generated"
    from msjax.data import split_lists

    return len(split_lists.original_lists(entry)[split].entries), "the original's list"


# ---- stages ------------------------------------------------------------------------------


def stage_configs(plan: Plan, root: str, options: Options) -> list:
    """[(stage, its preflight config)]: the stage's config on the preflight's data, each
    stage after the first starting from the weights the previous one exported."""
    out, previous = [], None
    for stage in plan.stages:
        c = stage.config.copy_and_resolve_references()
        c.data_dir = os.path.join(root, "data")
        c.train.tensorboard = False
        if options.model == "tiny":
            c.model.update(configlib.TINY_MODEL)
            c.init.checkpoint = ""
        if previous is not None:
            c.init.checkpoint = os.path.join(root, previous, WEIGHTS)
        out.append((stage, c))
        previous = stage.name
    return out


def peak_memory(mesh) -> tuple[int, str]:
    """(bytes, what they are): the devices' peak allocation where JAX reports it (GPU, TPU),
    else the process's peak resident memory."""
    stats = [d.memory_stats() for d in mesh.local_devices]
    if stats and all(s and "peak_bytes_in_use" in s for s in stats):
        return max(s["peak_bytes_in_use"] for s in stats), "device peak (memory_stats)"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss * scale, "process peak RSS (getrusage)"


def xla_memory(compiled) -> dict | None:
    """XLA's plan of the compiled step's memory per device, by kind (bytes), if it has one."""
    stats = compiled.memory_analysis()
    if isinstance(stats, list | tuple):
        stats = stats[0] if stats else None
    if stats is None:
        return None
    kinds = ("argument", "output", "alias", "temp", "generated_code")
    return {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in kinds}


def time_steps(run, steps: int) -> dict:
    """Lowers and compiles the run's jitted step, then runs `steps` steps on its streams."""
    import jax

    from msjax.training.loop import next_batches

    batches = next_batches(run)
    shapes = {"source_label": list(batches[0]["label"].shape)}
    for name, batch in zip(("source", "target"), batches, strict=True):
        shapes[name] = list(batch["image"].shape) if batch is not None else None
    start = time.perf_counter()
    lowered = run.step_fn.lower(run.state, *batches)
    lowered_at = time.perf_counter()
    print("  compiling the train step ...", flush=True)
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    times, waits, loss = [], [], None
    for i in range(steps):
        if i:
            t = time.perf_counter()
            batches = next_batches(run)
            waits.append(time.perf_counter() - t)
        t = time.perf_counter()
        run.state, metrics = compiled(run.state, *batches)
        loss = float(jax.device_get(metrics)["loss"])  # waits for the step
        times.append(time.perf_counter() - t)
        print(f"  step {i + 1}/{steps}: {times[-1]:.2f} s, loss {loss:.4f}", flush=True)
    return dict(
        shapes=shapes,
        lower_s=lowered_at - start,
        compile_s=compiled_at - lowered_at,
        first_step_s=times[0],
        step_s=sum(times[1:]) / len(times[1:]),
        step_times=times,
        batch_wait_s=sum(waits) / len(waits),
        loss=loss,
        xla_memory=xla_memory(compiled),
    )


def time_validation(run, images: int) -> dict:
    """A few images of the stage's validation split through the run's own validator:
    the first batch (compilation) apart, then the rest."""
    from msjax.evaluation.loop import evaluate_split

    v = run.validator
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    seen = []  # (real images, image [h, w]) per batch

    def note(local, out):
        seen.append((int(local["mask"].sum()), list(local["image"].shape[1:3])))

    batches, per_batch = iter(v.stream), v.stream.cfg.batch_size
    timed = []
    for count in (1, math.ceil(images / per_batch) - 1):
        start, before = time.perf_counter(), len(seen)
        evaluate_split(v.step, variables, itertools.islice(batches, count), v.num_classes,
                       mesh=v.mesh, on_batch=note)  # fmt: skip
        timed.append((time.perf_counter() - start, sum(n for n, _ in seen[before:])))
    del batches  # the pipeline of a split read only in part
    (first_s, first_n), (rest_s, rest_n) = timed
    s_per_image, includes_compile = per_image(first_s + rest_s, first_s, first_n,
                                              first_n + rest_n)  # fmt: skip
    return dict(
        split=f"{v.stream.cfg.dataset}/{v.stream.cfg.size}/{v.stream.cfg.split}",
        image_hw=seen[0][1] if seen else None,
        images=first_n + rest_n,
        first_batch_s=first_s,
        s_per_image=s_per_image,
        includes_compile=includes_compile,
    )


def per_image(total_s: float, first_s: float, first_n: int, images: int) -> tuple[float, bool]:
    """(seconds per image after the first batch, whether that includes compilation: when
    the first batch held every image, it is all there is to time)."""
    if images > first_n:
        return (total_s - first_s) / (images - first_n), False
    return first_s / max(images, 1), True


def validations(config) -> int:
    """How many validations a full run of `config` makes (every eval.every_steps, and at
    the end)."""
    steps, every = config.train.steps, config.eval.every_steps
    return steps // every + (1 if steps % every else 0)


def preflight_stage(plan: Plan, stage, config, root: str, options: Options) -> dict:
    """One stage: build, compile, a few steps, export weights, a few validation images."""
    from msjax.training.loop import export
    from msjax.training.run import build_run

    print(f"\n== preflight of {stage.title}", flush=True)
    run = build_run(config, os.path.join(root, stage.name))
    try:
        measured = time_steps(run, options.steps)
        export(run, WEIGHTS, options.steps, preflight=True)
        measured["validation"] = time_validation(run, options.images)
    finally:
        run.close()
    measured["peak_memory_bytes"], measured["memory_kind"] = peak_memory(run.mesh)
    real = stage.config
    val = measured["validation"]
    val["split_images"], val["split_images_from"] = split_images(
        real.eval.dataset, real.eval.size, real.eval.split, plan.data_dir
    )
    val["count"] = validations(real)
    train_s = real.train.steps * measured["step_s"]
    val_s = val["count"] * val["split_images"] * val["s_per_image"]
    return dict(
        stage=stage.name, title=stage.title, steps=real.train.steps, **measured,
        projected_s={"train": train_s, "validation": val_s, "total": train_s + val_s},
    )  # fmt: skip


# ---- evaluation --------------------------------------------------------------------------


def evaluate_target(plan: Plan, weights: str, data_dir: str, found, images: int, progress):
    """A few images of the row's target under each protocol its prepared data allows, with
    and without flip, as the report evaluates them; with the report's projected time."""
    from msjax.evaluation import protocol

    dataset, size = data.eval_input(plan)
    available = {(f["dataset"], f["size"]) for f in found if f.get("source")}
    names = ["original"]
    if not plan.row.smoke and (dataset, datasets.FULL) in available:
        names.append("full")
    scored, _ = scoring.protocols(plan)
    split = data.eval_setting(plan).split
    split_n, split_from = split_images(dataset, size, split, plan.data_dir)
    batch = plan.config.eval.batch_size
    entries = []
    for name, views in itertools.product(names, scoring.VIEWS):
        print(f"\n== evaluating {dataset} {split}, protocol {name}, {views.describe()}", flush=True)
        r = protocol.evaluate(weights, dataset, data_dir, protocol=name, views=views,
                              input_size=size, batch_size=batch, progress=progress,
                              max_images=images)  # fmt: skip
        s_per_image, includes_compile = per_image(
            r["seconds"], r["first_batch_seconds"], min(batch, r["num_images"]), r["num_images"]
        )
        entries.append(
            dict(
                protocol=name,
                flip=views.flip,
                image_hw=r["image_hw"],
                label_hw=r["label_hw"],
                images=r["num_images"],
                seconds=r["seconds"],
                first_batch_s=r["first_batch_seconds"],
                s_per_image=s_per_image,
                includes_compile=includes_compile,
                in_report=name in scored,
                split_images=split_n,
                split_images_from=split_from,
                checkpoints=len(plan.checkpoints),
                projected_s=len(plan.checkpoints) * split_n * s_per_image,
            )
        )
    return entries


# ---- the whole preflight -----------------------------------------------------------------


def notes(plan: Plan, options: Options, found, stages) -> list[str]:
    """What a reader of the numbers must know."""
    out = [
        f"step time: the mean of the steps after the first of {options.steps} (the first, "
        "right after compilation, is not timed); compile: lowering and compiling the "
        "trainer's jitted step; batch wait: the host's time to produce a batch, which the "
        "real loop overlaps with the step",
        "projected: steps x step time + validations x images x time per image; data "
        "preparation, checkpoint saves and start-up are not included",
    ]
    if stages and stages[0]["memory_kind"].startswith("process"):
        out.append("peak memory: the process's peak resident memory so far (TensorFlow's "
                   "pipeline and earlier stages included); XLA: its plan for one step")  # fmt: skip
    if options.model == "tiny":
        out.append("tiny model (--preflight-model tiny): data and shapes only; the times "
                   "and memory are not the real model's")  # fmt: skip
    elif not (plan.init or plan.row.smoke) and plan.stages[0].name in methods.source_only():
        out.append("no --init: the source stage started from random weights (the timing "
                   "is the same; the losses are not)")  # fmt: skip
    for f in found:
        missing = [f"{n:,} {why}" for why, n in f.get("skipped", {}).items()
                   if "not in any" not in why]  # fmt: skip
        if missing:
            out.append(f"{f['dataset']} {f['size']}: {', '.join(missing)} in the raw folder; "
                       "the real preparation stops on these (python -m msjax.prepare "
                       "--skip-bad leaves them out)")  # fmt: skip
        if f.get("note"):
            out.append(f"{f['dataset']} {f['size']}: {f['note']}")
    out += [f"the report will not score {n}" for n in scoring.protocols(plan)[1]]
    return out


def preflight(plan: Plan, raw_dirs: dict, options: Options, progress: bool = True) -> dict:
    """Runs the preflight of a checked plan; returns its record (with 'paths' written).

    Args:
      plan: from `make_plan`, checked (`check_plan(require_init=False)`, `data.check_raw`),
        its workdir made.
      raw_dirs: raw flag -> folder, for the data not prepared yet.
      options: see `Options`.
      progress: show progress bars.
    """
    root = folder(plan)
    clear(root)
    data_dir = os.path.join(root, "data")
    examples = max([options.images] + [s.config.batch_pairs for s in plan.stages])
    found = make_data(plan, raw_dirs, data_dir, examples, progress)
    stages = [
        preflight_stage(plan, stage, config, root, options)
        for stage, config in stage_configs(plan, root, options)
    ]
    weights = os.path.join(root, plan.stages[-1].name, WEIGHTS)
    evaluations = evaluate_target(plan, weights, data_dir, found, options.images, progress)
    model = stages_model(plan, options)
    total = sum(s["projected_s"]["total"] for s in stages)
    total += sum(e["projected_s"] for e in evaluations if e["in_report"])
    record = dict(
        row=plan.row.name, device=device_facts(), model=model, options=dataclasses.asdict(options),
        data=found, stages=stages, evaluations=evaluations, projected_total_s=total,
        notes=notes(plan, options, found, stages), folder=root,
    )  # fmt: skip
    record["paths"] = write(record, root)
    return record


def stages_model(plan: Plan, options: Options) -> dict:
    """The model the preflight ran (the stage configs', or the tiny one) and its init."""
    m = dict(plan.stages[0].config.model)
    if options.model == "tiny":
        m.update(configlib.TINY_MODEL)
    init = plan.stages[0].config.init.checkpoint if options.model == "real" else ""
    which = "the stage configs'" if options.model == "real" else "tiny: --preflight-model tiny"
    return dict(
        blocks=list(m["blocks"]), width=m["width"], dtype=m["dtype"], bn_mode=m["bn_mode"],
        num_classes=m["num_classes"], init=init or "random initialisation", which=which,
    )  # fmt: skip


__all__ = ["Options", "folder", "make_options", "markdown", "preflight", "write"]
