"""Reproducing a row of the paper end to end, as the original's commands run it.

`python -m msjax.reproduce ROW ...` (docs/protocol.md) is `reproduce(plan, raw_dirs)`:

1. prepare the data sets the row reads that are not prepared yet (`data`);
2. train its chain of runs with `msjax.training.stages`: the source model it needs
   (`source`, or `source_multi` for IW+Multi) unless one is given, then the adaptation,
   which starts from the source run's final/ (best/ for IW+Multi);
3. score the chosen checkpoints under both protocols, with and without flip, and write a
   report beside the paper's row that names how each checkpoint was chosen (`scoring`).

Every step resumes: prepared data is not prepared again, finished runs are skipped, an
interrupted one continues from its checkpoint, finished evaluations are read back.
"""

from __future__ import annotations

from msjax.reproduction.plan import Plan, check_plan, make_plan, make_workdir
from msjax.reproduction.rows import Row, parse_row

__all__ = ["Plan", "Row", "check_plan", "make_plan", "make_workdir", "parse_row", "reproduce"]


def reproduce(plan: Plan, raw_dirs: dict, progress: bool = True) -> dict:
    """Runs (or resumes) a checked plan; returns the report record.

    Args:
      plan: from `make_plan`, checked with `check_plan` and `data.check_raw`, its
        workdir made with `make_workdir`.
      raw_dirs: {data set: raw folder} for the data sets still to prepare.
      progress: show progress bars.

    Returns:
      The report (`scoring.report_record`) plus 'paths' of report.md / report.json, or
      {'stop_signal': ...} when a signal stopped a training stage (run again to continue).
    """
    import jax

    from msjax.reproduction import data, scoring
    from msjax.training.stages import run_stages

    if jax.process_index() == 0:
        data.prepare_missing(plan, raw_dirs, progress)
    if jax.process_count() > 1:  # the other processes read what process 0 prepared
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("msjax.reproduce: data prepared")
    summaries = run_stages(plan.stages, plan.chain_dir)
    stopped = [s["stop_signal"] for s in summaries.values() if "stop_signal" in s]
    if stopped:
        return {"stop_signal": stopped[0]}
    if jax.process_index() != 0:  # evaluation reads the data on one process
        return {}
    entries, notes = scoring.evaluate_checkpoints(plan, progress)
    record = scoring.report_record(plan, summaries, entries, notes)
    return dict(record, paths=scoring.write(plan, record))
