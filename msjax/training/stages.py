"""Chains of training runs: a source model, then adaptations that start from its weights.

The demo (`python -m msjax.demo`) and the paper reproduction (`python -m msjax.reproduce`)
are chains of ordinary, resumable training runs ("stages"), each in its own folder of the
chain's workdir. Every stage's config is checked before the first one starts. A stage that
has finished (its results.json covers all its steps) is not run again, so an interrupted
chain continues where it stopped with the same command; a finished stage recorded with a
config that differs in a field that changes the computation is an error, not reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from msjax import config_checks
from msjax.errors import WorkdirError
from msjax.training import workdir
from msjax.training.loop import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run of a chain.

    Attributes:
      name: its folder under the chain's workdir (and its key in the chain's results).
      title: a human-readable name, printed when it starts.
      config: its complete run config (config.init.checkpoint may point into an earlier
        stage's folder, e.g. CHAIN/source/final).
    """

    name: str
    title: str
    config: Any


def finished_summary(folder: str, steps: int) -> dict | None:
    """The results.json summary of a stage that has run all `steps`, else None."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError):
        # Damaged (results.json is written atomically, so not by msjax): run the stage
        # again; it resumes from its checkpoints and writes the file anew.
        return None
    finished = isinstance(summary, dict) and summary.get("final_step", 0) >= steps
    return summary if finished else None


def check_finished_config(stage: Stage, folder: str) -> None:
    """Raises WorkdirError if a finished stage ran with a config that computes differently."""
    path = os.path.join(folder, workdir.CONFIG_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(stage.config.to_json_best_effort())
    changes = workdir.config_changes(previous, current)
    if changes:
        listed = "\n  ".join(changes[:12])
        raise WorkdirError(
            f"{folder} holds the finished stage {stage.name!r} of another config "
            f"({len(changes)} fields differ):\n  {listed}\nRun the same command as before, or "
            "use a new --workdir (or move that folder away) to train this one."
        )


def run_stage(stage: Stage, chain_dir: str) -> dict:
    """Runs (or resumes, or skips if finished) one stage; returns its summary."""
    folder = os.path.join(chain_dir, stage.name)
    steps = stage.config.train.steps
    done = finished_summary(folder, steps)
    loud = jax.process_index() == 0
    if done is not None:
        check_finished_config(stage, folder)
        if loud:
            print(f"\n== {stage.title}: finished earlier ({folder}), skipped", flush=True)
        return done
    if loud:
        print(f"\n== {stage.title}: {steps} steps -> {folder}", flush=True)
    return train_and_evaluate(stage.config, folder)


def run_stages(stages: list[Stage], chain_dir: str) -> dict[str, dict]:
    """Runs the stages in order; stops after one that was stopped by a signal.

    Returns:
      {stage name: its summary} for the stages that ran (or had finished); a stopped stage's
      summary carries `stop_signal`.

    Raises:
      ConfigError: a stage's config has a field that cannot work (before any stage runs).
    """
    for stage in stages:
        # Paths are checked when each stage starts: a stage's weights may be an earlier
        # stage's output, not written yet.
        config_checks.check_config(stage.config, check_paths=False)
    summaries = {}
    for stage in stages:
        summaries[stage.name] = run_stage(stage, chain_dir)
        if "stop_signal" in summaries[stage.name]:
            break
    return summaries
