r"""`python -m msjax.reproduce ROW`: one row of the paper, end to end, in one command.

    python -m msjax.reproduce gta2city:iw_multi --gta5 RAW --cityscapes RAW \
        --init weights/init_19 --workdir runs/paper [--source-weights CONVERTED] \
        [--data-dir DATA]
    python -m msjax.reproduce city2nthu:rome --cityscapes RAW --nthu RAW \
        --init weights/init_13 --workdir runs/paper
    python -m msjax.reproduce gta2city:iw_multi,smoke --workdir /tmp/repro   # CPU, no data
    python -m msjax.reproduce ROW ... --preflight   # a few steps of every stage, timed

ROW is SETTING:ARG, the config `configs/SETTING.py:ARG` of the row's run (gta2city:source,
gta2city:maxsquare, synthia2city:iw, city2nthu:rio,iw, ...). The command prepares the data
it needs that is not prepared yet (from the raw folders), trains the source model the row
needs (or adapts --source-weights), adapts, scores the chosen checkpoints under both
protocols with and without flip, and writes WORKDIR/reports/ROW/report.{md,json} beside
the paper's number (`msjax.reproduction`; docs/protocol.md lists every row's chain). The
same command resumes an interrupted reproduction. Errors print one `error: ...` line and
exit 2 (`--verbose` adds the traceback); SIGTERM saves the running stage and exits 0.

`--preflight` runs every stage of the row for a few steps at its real sizes (on subsets of
the data not prepared yet), evaluates a few images under each protocol, and reports per
stage the step time, memory and projected wall time in WORKDIR/preflight/ROW/
(`msjax.reproduction.preflight`); it writes nothing the real reproduction reads.
"""

from __future__ import annotations

import sys

from msjax import cli


def parse_args(argv):
    from msjax.data.datasets import raw_flags

    p = cli.argument_parser("python -m msjax.reproduce", __doc__)
    p.add_argument("row", help="SETTING:ARG, e.g. gta2city:iw_multi or city2nthu:rome[,smoke]")
    p.add_argument("--workdir", required=True, help="folder of the runs and the report")
    for flag in raw_flags():
        p.add_argument(f"--{flag}", default=None, metavar="RAW",
                       help=f"raw {flag} download folder (needed while not prepared)")  # fmt: skip
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="converted DeepLab ImageNet init the source model starts from")  # fmt: skip
    p.add_argument("--source-weights", default=None, metavar="CONVERTED",
                   help="a converted source model to adapt instead of training one")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="prepared data (default WORKDIR/data)")
    p.add_argument("--preflight", action="store_true",
                   help="run every stage a few steps at its real sizes and report time and "
                   "memory (WORKDIR/preflight/ROW); --init may be left out")  # fmt: skip
    p.add_argument("--preflight-steps", type=int, default=None, metavar="N",
                   help="training steps per stage of --preflight (default 3)")  # fmt: skip
    p.add_argument("--preflight-images", type=int, default=None, metavar="N",
                   help="images per evaluation of --preflight (default 2)")  # fmt: skip
    p.add_argument("--preflight-model", default=None, metavar="real|tiny",
                   help="tiny: a tiny DeepLabV2, data and shapes only (default real)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return p.parse_args(argv)


def preflight_options(args):
    """The preflight's options, or None for a real reproduction; ConfigError naming a
    --preflight-* flag given without --preflight or with a bad value."""
    from msjax.errors import ConfigError
    from msjax.reproduction.preflight import make_options

    given = {"steps": args.preflight_steps, "images": args.preflight_images,
             "model": args.preflight_model}  # fmt: skip
    if not args.preflight:
        extra = [f"--preflight-{k}" for k, v in given.items() if v is not None]
        if extra:
            raise ConfigError(f"{extra[0]}: only with --preflight.")
        return None
    return make_options(**given)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli.quiet_tensorflow()

    def command() -> int:
        args = parse_args(argv)  # inside cli.run: --help returns 0, Ctrl-C is one line
        cli.check_workdir(args.workdir)
        from absl import logging as absl_logging

        # TensorFlow (the data pipeline) prints C++ banners at import that no flag silences.
        with cli.quiet_native_stderr():
            from msjax.data import builders  # noqa: F401
        from msjax import ownership, reproduction
        from msjax.data import datasets
        from msjax.reproduction import data
        from msjax.training import preemption

        absl_logging.set_verbosity(absl_logging.INFO if args.verbose else absl_logging.WARNING)
        options = preflight_options(args)
        row = reproduction.parse_row(args.row)
        plan = reproduction.make_plan(
            row, args.workdir, args.data_dir, args.init, args.source_weights
        )
        raw_dirs = {flag: getattr(args, flag) for flag in datasets.raw_flags()}
        reproduction.check_plan(plan, require_init=options is None)
        data.check_smoke_raw(plan, raw_dirs)
        data.check_raw(data.missing(plan), raw_dirs, plan.data_dir)
        reproduction.make_workdir(plan)
        cli.start_training_process(plan.config)
        with ownership.use_folder(plan.workdir, "msjax.reproduce", what="--workdir",
                                  collective=True):  # fmt: skip
            if options is not None:
                from msjax.reproduction import preflight

                record = preflight.preflight(plan, raw_dirs, options, progress=not args.no_progress)
                print("\n" + preflight.markdown(record))
                print("wrote " + ", ".join(record["paths"].values()))
                return 0
            record = reproduction.reproduce(plan, raw_dirs, progress=not args.no_progress)
        if "stop_signal" in record:
            return preemption.EXIT_STATUS.get(record["stop_signal"], 0)
        if "paths" in record:
            from msjax.reproduction import scoring

            print("\n" + scoring.markdown(record))
            print("wrote " + ", ".join(record["paths"].values()))
        return 0

    return cli.run(command, verbose=cli.wants_verbose(sys.argv if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
