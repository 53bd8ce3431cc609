"""`python -m msjax.evaluate`: a weights folder -> exact mIoU under a named protocol, a report.

    python -m msjax.evaluate --checkpoint runs/iw/best --dataset cityscapes --data-dir DATA \
        [--protocol original|full] [--flip] [--scales 0.75,1.0,1.25] [--split val] \
        [--method maxsquare_iw] [--out DIR] [--save-predictions] [--verbose]

`original` compares with labels resized nearest to the input size (the paper's protocol),
`full` with the native 2048x1024 labels (`msjax.evaluation.protocol`). The report prints
per-class IoU beside the paper's row and writes OUT/results.json, OUT/results.md and
OUT/iou.png; `--save-predictions` adds Cityscapes label-id PNGs in OUT/predictions/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msjax import cli


def parse_args(argv):
    from msjax.evaluation import inference, published
    from msjax.evaluation.protocol import DEFAULT_INPUT_SIZE, PROTOCOLS

    p = argparse.ArgumentParser(prog="python -m msjax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="weights folder (metadata.json + variables/)"
    )
    p.add_argument(
        "--dataset",
        required=True,
        help='cityscapes, nthu-CITY (rome, rio, ...), synthetic (the demo\'s "real" '
        "style) or synthetic-DOMAIN (e.g. synthetic-fog-2)",
    )
    p.add_argument("--data-dir", required=True, help="folder given to msjax.prepare --data-dir")
    p.add_argument("--protocol", default="original", choices=PROTOCOLS)
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated input scales to average")
    p.add_argument("--split", default=None, help="default: val (Cityscapes), test (NTHU)")
    p.add_argument("--input-size", default=DEFAULT_INPUT_SIZE, help="WxH fed to the network")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--precision", default=inference.DEFAULT_PRECISION, choices=inference.PRECISIONS,
                   help="'highest' float32 (default) or 'default' (TF32 on GPUs)")  # fmt: skip
    p.add_argument("--method", default=None, choices=published.METHODS,
                   help="paper row to compare with (default: the paper's best)")  # fmt: skip
    p.add_argument("--out", default=None, help="report folder (default eval/CKPT/TAG)")
    p.add_argument("--save-predictions", action="store_true",
                   help="also write Cityscapes label-id PNGs to OUT/predictions")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli.quiet_tensorflow()
    args = parse_args(argv)

    def command():
        from msjax.evaluation import inference, protocol, report

        # TensorFlow (the data pipeline) prints C++ banners at import that no flag silences.
        with cli.quiet_native_stderr():
            from msjax.data import builders, pipeline  # noqa: F401
        views = inference.Views.from_flags(args.flip, args.scales)
        default = protocol.default_out_dir(args.checkpoint, args.dataset, args.protocol, views)
        out = Path(args.out or default)
        results = protocol.evaluate(
            args.checkpoint,
            args.dataset,
            args.data_dir,
            protocol=args.protocol,
            views=views,
            split=args.split,
            input_size=args.input_size,
            batch_size=args.batch_size,
            predictions_dir=out / "predictions" if args.save_predictions else None,
            precision=args.precision,
            progress=not args.no_progress,
        )
        paths = report.write_report(results, out, args.method)
        print(report.format_table(results, args.method))
        print("wrote " + ", ".join(str(v) for v in paths.values()))

    return cli.run(command, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
