"""The prepared data a reproduction reads, and preparing what is missing from the raw folders.

Every (data set, size) a stage trains or validates on, and the evaluation's images, must be
prepared in the plan's data folder; the ones that are not are prepared from the raw folder
given for their data set (`--gta5`, `--synthia`, `--cityscapes`, `--nthu`: `Raw.flag` of
msjax.data.datasets) with `msjax.data.preparation.prepare_one`, or generated (synthetic
smoke data). Only the `full` sizes, which the `full` protocol needs, are never prepared here:
they are scored when present (docs/protocol.md).
"""

from __future__ import annotations

import os

from msjax import methods
from msjax.data import builders, datasets
from msjax.errors import ConfigError, DataError
from msjax.evaluation import protocol
from msjax.reproduction.plan import Plan

SMOKE_EVAL_DATASET = "synthetic-target"


def eval_input(plan: Plan) -> tuple[str, str]:
    """(data set, input size) of the report's evaluations."""
    if plan.row.smoke:
        return SMOKE_EVAL_DATASET, plan.config.eval.size
    return plan.row.target, protocol.DEFAULT_INPUT_SIZE


def eval_sizes(plan: Plan) -> list[str]:
    """Input sizes the report scores at: the paper's protocol size, and the size the method
    trains and validates its target at when that differs (IW + Multi: Cityscapes 1280x640,
    where the original's run picks its best checkpoint)."""
    _, size = eval_input(plan)
    extra = plan.row.method.target_size
    return [size] + ([extra] if extra and extra != size and not plan.row.smoke else [])


def eval_setting(plan: Plan, protocol_name: str = "original") -> protocol.Setting:
    """Where the report's evaluation reads its images (and labels) under a protocol."""
    dataset, size = eval_input(plan)
    return protocol.resolve(dataset, protocol_name, None, size)


def needed(plan: Plan) -> list[tuple[str, str]]:
    """Every (data set, size) the plan's stages and its 'original' evaluation read."""
    wanted = set()
    for stage in plan.stages:
        c = stage.config
        wanted |= {(c.source.dataset, c.source.size), (c.eval.dataset, c.eval.size)}
        if methods.get(c.method).adapting:
            wanted.add((c.target.dataset, c.target.size))
    setting = eval_setting(plan)
    wanted.add((setting.dataset.name, setting.image_size))
    return sorted(wanted)


def missing(plan: Plan) -> list[tuple[str, str]]:
    """The needed (data set, size) pairs not prepared in the plan's data folder."""
    return [
        (dataset, size)
        for dataset, size in needed(plan)
        if size not in builders.prepared_sizes(dataset, plan.data_dir)
    ]


def check_raw(todo: list[tuple[str, str]], raw_dirs: dict, data_dir: str) -> None:
    """Raises ConfigError unless every data set to prepare has an existing raw folder.

    Args:
      raw_dirs: raw flag ('gta5', 'nthu', ...) -> the folder given, or None.
    """
    for dataset, size in todo:
        entry = datasets.get(dataset)
        if entry.generated:
            continue
        flag, raw = f"--{entry.raw.flag}", raw_dirs.get(entry.raw.flag)
        if not raw:
            raise ConfigError(
                f"{dataset} {size} is not prepared in {data_dir}: pass {flag} RAW_DIR (the "
                f"raw download folder) to prepare it, or --data-dir where it is prepared."
            )
        if not os.path.isdir(os.path.expanduser(raw)):
            raise ConfigError(f"{flag} {raw}: no such folder.")


def check_smoke_raw(plan: Plan, raw_dirs: dict) -> None:
    """A smoke row reads generated data only: raw folders given to it are an error."""
    given = [f"--{flag}" for flag, raw in raw_dirs.items() if raw]
    if plan.row.smoke and given:
        raise ConfigError(
            f"{', '.join(given)}: {plan.row.name} runs on generated synthetic data; "
            "drop ',smoke' to use the raw data sets."
        )


def prepare_missing(plan: Plan, raw_dirs: dict, progress: bool = True) -> list[dict]:
    """Prepares every missing (data set, config); returns the `prepare_one` summaries."""
    from msjax.data.preparation import format_summary, prepare_one

    summaries = []
    for dataset, size in missing(plan):
        entry = datasets.get(dataset)
        raw = None if entry.generated else raw_dirs.get(entry.raw.flag)
        print(f"Preparing {dataset} {size} into {plan.data_dir} ...", flush=True)
        try:
            summary = prepare_one(dataset, size, plan.data_dir, raw_dir=raw, progress=progress)
        except builders.BadPairError as e:
            raise DataError(
                f"{e} Prepare it with `python -m msjax.prepare {dataset} {raw} --data-dir "
                f"{plan.data_dir} --size {size} --skip-bad` to leave such pairs out "
                "(they are listed), then run this command again."
            ) from e
        print(format_summary(summary), flush=True)
        summaries.append(summary)
    return summaries
