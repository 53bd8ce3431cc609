r"""`python -m msjax.study`: what does the target loss itself add? Every method, over seeds.

    python -m msjax.study --workdir runs/study [--config configs/study.py[:ARG]] \
        [--report_only] [--docs_dir docs]

Runs (or continues) the study of configs/study.py in WORKDIR (`msjax.training.study`: per
seed a source model, then each method's adaptation on each shift), then prints its tables:
target mIoU per shift and method over the seeds, the paired difference to the control and
to MinEnt with a 95% interval, the rare classes' IoU, the source models' confidence on each
shift and the easy pixels' share of the loss gradient. WORKDIR/report.md holds the same;
with --docs_dir, also the figures (<title>_curves.png, <title>_gradient_share.png).
--report_only reads the runs that have finished and trains nothing.
"""

from __future__ import annotations

import os
import sys

from msjax import cli, outputs, ownership

_EXTRA_FLAGS = []


def _define_flags() -> None:
    """The study's own flags, defined once per process beside the config flags."""
    if _EXTRA_FLAGS:
        return
    from absl import flags

    _EXTRA_FLAGS.append(flags.DEFINE_bool("report_only", False, "Train nothing; report."))
    _EXTRA_FLAGS.append(flags.DEFINE_string("docs_dir", None, "Write the figures there."))


def report(config, workdir: str, docs_dir: str | None = None) -> str:
    """The study's Markdown report of the finished runs; writes WORKDIR/report.md (+ figures).

    Args:
      config: the study config.
      workdir: the study's folder.
      docs_dir: also write the figures there (None: only the report).

    Returns:
      The report text.
    """
    from msjax.evaluation import study_report as sr
    from msjax.training import study

    for run in study.study_runs(config, workdir):
        if run.method == "source":
            study.score_source(config, run, workdir)
    records = sr.collect(config, workdir)
    text = (
        "## Target mIoU per shift and method\n"
        + sr.markdown(config, records)
        + "\n## Per seed\n"
        + sr.seed_markdown(config, records)
        + "\n## The source models on each shift\n\n"
        + sr.source_markdown(config, records)
    )
    if any(r["method"] in ("minent", "maxsquare", "control") for r in records):
        text += "\n## Easy pixels (p > 0.9) and their share of the gradient\n\n"
        text += sr.shares_markdown(config, records)
        if docs_dir:
            title = config.study.name
            os.makedirs(docs_dir, exist_ok=True)
            sr.plot_curves(config, records, os.path.join(docs_dir, f"{title}_curves.png"))
            path = os.path.join(docs_dir, f"{title}_gradient_share.png")
            sr.plot_gradient_shares(config, records, path)
    outputs.write_text(os.path.join(workdir, "report.md"), text)
    return text


def check_something_finished(config, workdir: str) -> None:
    """Raises WorkdirError when no run of the study has finished in `workdir` (an empty
    report would be a success that reports nothing)."""
    from msjax.errors import WorkdirError
    from msjax.training import study
    from msjax.training.stages import finished_summary

    for run in study.study_runs(config, workdir):
        if finished_summary(os.path.join(workdir, run.stage.name), run.stage.config.train.steps):
            return
    raise WorkdirError(
        f"--workdir {workdir} holds no finished run of this study, so --report_only has "
        "nothing to report: run the study there without --report_only first."
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli.quiet_tensorflow()
    argv = list(sys.argv if argv is None else argv)
    _define_flags()
    parsed = cli.parse_config_flags(
        argv, default_config="study.py", usage=__doc__, extra_flags=("report_only", "docs_dir")
    )
    if isinstance(parsed, int):
        return parsed
    flags, config = parsed

    def command() -> int:
        with cli.quiet_native_stderr():  # TensorFlow's C++ banners at import
            from msjax.data import builders  # noqa: F401
        from msjax.config_checks import check_study
        from msjax.errors import ConfigError
        from msjax.training import preemption
        from msjax.training.study import run_study

        cli.check_workdir(flags.workdir)
        if "study" not in config:
            raise ConfigError("--config: msjax.study needs a study config (configs/study.py).")
        check_study(config.study)
        workdir = os.path.abspath(os.path.expanduser(flags.workdir))
        status = 0
        if not flags.report_only:
            cli.start_training_process(config)
        with ownership.use_folder(workdir, "msjax.study", what="--workdir",
                                  clashes=("report.md",), collective=True):  # fmt: skip
            if not flags.report_only:
                done = run_study(config, workdir)
                print(f"\nStudy: {done['finished']} runs finished; this call trained for "
                      f"{done['ran_s'] / 60:.1f} min.", flush=True)  # fmt: skip
                status = preemption.EXIT_STATUS.get(done.get("stop_signal"), 0)
            if flags.report_only:
                check_something_finished(config, workdir)
            if status == 0:
                print(report(config, workdir, flags.docs_dir), flush=True)
        return status

    return cli.run(command, verbose=flags.verbose)


if __name__ == "__main__":
    sys.exit(main())
