r"""`python -m msjax.evaluate`: a weights folder -> exact mIoU under a named protocol, a report.

    python -m msjax.evaluate --checkpoint runs/iw/best --dataset cityscapes --data-dir DATA \
        [--protocol original|full] [--flip] [--scales 0.75,1.0,1.25] [--split val] \
        [--method iw] [--out DIR] [--save-predictions] [--verbose]

`original` compares with labels resized nearest to the input size (the paper's protocol),
`full` with the native 2048x1024 labels (`msjax.evaluation.protocol`). The report prints
per-class IoU beside the paper's row and writes OUT/results.json, OUT/results.md and
OUT/iou.png; `--save-predictions` adds Cityscapes label-id PNGs in OUT/predictions/. They
replace an earlier report only once all are written; other files in OUT are left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from msjax import cli

MAX_BATCH_SIZE = 64  # images per step; more only adds memory (an upper bound before any work)


def parse_args(argv):
    from msjax.evaluation import inference, published
    from msjax.evaluation.protocol import PROTOCOLS

    p = cli.argument_parser("python -m msjax.evaluate", __doc__)
    p.add_argument(
        "--checkpoint", required=True, help="weights folder (metadata.json + variables/)"
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="a data set: cityscapes, nthu-CITY (rome, rio, tokyo, taipei), gta5, synthia, or "
        'a generated one: synthetic-target (the demo\'s "real" style), synthetic-fog-2, ...',
    )
    p.add_argument("--data-dir", required=True, help="folder given to msjax.prepare --data-dir")
    p.add_argument("--protocol", default="original", choices=list(PROTOCOLS))
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated input scales to average")
    p.add_argument("--split", default=None, help="default: val (Cityscapes), test (NTHU)")
    p.add_argument("--input-size", default=None,
                   help="WxH fed to the network (a prepared size; default 1024x512, or the "
                   "data set's own size where it has no 1024x512)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1,
                   help=f"images per step (at most {MAX_BATCH_SIZE})")  # fmt: skip
    p.add_argument("--precision", default=inference.DEFAULT_PRECISION, choices=inference.PRECISIONS,
                   help="'highest' float32 (default) or 'default' (TF32 on GPUs)")  # fmt: skip
    p.add_argument("--method", default=None, choices=published.METHODS,
                   help="paper row to compare with (default: the method the weights were trained "
                   "with, else the paper's best)")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="report folder (default eval/<checkpoint's path>/<dataset>_<protocol>"
                   "[_flip][_ms] under the current folder)")  # fmt: skip
    p.add_argument("--save-predictions", action="store_true",
                   help="also write Cityscapes label-id PNGs to OUT/predictions")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return p.parse_args(argv)


def check_args(args) -> Path:
    """Checks the arguments that name files and folders; returns the report folder.

    The evaluation's own arguments (data set, protocol, scales, batch size, checkpoint
    contents) are checked by `msjax.evaluation.protocol.evaluate` before it reads any data.
    """
    from msjax import outputs
    from msjax.errors import ConfigError
    from msjax.evaluation import inference, protocol

    data_dir = Path(args.data_dir).expanduser()
    if not str(args.data_dir).strip() or not data_dir.is_dir():
        what = "is a file" if data_dir.is_file() else "does not exist"
        raise ConfigError(
            f"--data-dir {args.data_dir!r} {what}: give the folder the data sets were "
            "prepared into (python -m msjax.prepare ... --data-dir DATA)."
        )
    if args.split is not None and not args.split.strip():
        raise ConfigError("--split is empty: name a split, or leave it out for the default.")
    views = inference.Views.from_flags(args.flip, args.scales)
    if args.out is None:
        out = protocol.default_out_dir(args.checkpoint, args.dataset, args.protocol, views)
    else:
        out = args.out
    return outputs.check_output_folder(out, "--out")


def check_sizes(args, setting, views) -> None:
    """Checks --batch-size and the network input against their bounds, before any work.

    Raises ConfigError for a batch size out of [1, MAX_BATCH_SIZE], or a network input (the
    input size at the largest scale) over inference.MAX_NETWORK_PIXELS.
    """
    from msjax.errors import ConfigError
    from msjax.evaluation import inference

    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"--batch-size {args.batch_size}: must be in [1, {MAX_BATCH_SIZE}].")
    w, _, h = setting.image_size.partition("x")
    if w.isdigit() and h.isdigit():
        what = f"--input-size {setting.image_size}"
        inference.check_network_size((int(w), int(h)), views, what)


def identity(args, setting, views) -> dict:
    """What a report is of (its folder holds one; see msjax.ownership)."""
    import os

    return {
        "checkpoint": os.path.abspath(os.path.expanduser(args.checkpoint)),
        "dataset": args.dataset,
        "split": setting.split,
        "protocol": args.protocol,
        "input_size": setting.image_size,
        "flip": views.flip,
        "scales": list(views.scales),
    }


def capped_batch_size(args, setting) -> int:
    """--batch-size, at most the split's size (a larger batch would only pad)."""
    from msjax.data import builders
    from msjax.errors import DataError

    try:
        builder = builders.load_builder(setting.dataset.name, setting.image_size, args.data_dir)
    except DataError:
        return args.batch_size  # protocol.evaluate names the problem
    splits = builder.info.splits
    if setting.split not in splits:
        return args.batch_size  # as above
    examples = splits[setting.split].num_examples
    if 0 < examples < args.batch_size:
        print(f"--batch-size {args.batch_size}: the {setting.split} split has {examples} "
              f"images; using {examples}.", flush=True)  # fmt: skip
        return examples
    return args.batch_size


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli.quiet_tensorflow()

    def command():
        args = parse_args(argv)  # inside cli.run: a Ctrl-C while it imports is one line
        from msjax import outputs, ownership
        from msjax.evaluation import inference, protocol, report

        out = check_args(args)
        # TensorFlow (the data pipeline) prints C++ banners at import that no flag silences.
        with cli.quiet_native_stderr():
            from msjax.data import builders, pipeline  # noqa: F401
        views = inference.Views.from_flags(args.flip, args.scales)
        setting = protocol.resolve(args.dataset, args.protocol, args.split, args.input_size)
        check_sizes(args, setting, views)
        cli.start_jax()
        owner = dict(what="--out", identity=identity(args, setting, views),
                     clashes=(*report.REPORT_FILES, "predictions"))  # fmt: skip
        # Everything is written under a staging folder and moved into OUT only at the end:
        # a failed or interrupted evaluation leaves an earlier report in OUT as it was.
        with ownership.use_folder(out, "msjax.evaluate", **owner), outputs.Staging(out) as staging:
            results = protocol.evaluate(
                args.checkpoint,
                args.dataset,
                args.data_dir,
                protocol=args.protocol,
                views=views,
                split=args.split,
                input_size=args.input_size,
                batch_size=capped_batch_size(args, setting),
                predictions_dir=staging.path / "predictions" if args.save_predictions else None,
                precision=args.precision,
                progress=not args.no_progress,
            )
            paths = report.write_report(results, staging.path, args.method)
        print(report.format_table(results, args.method))
        print("wrote " + ", ".join(str(staging.final(p)) for p in paths.values()))

    return cli.run(command, verbose=cli.wants_verbose(sys.argv if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
