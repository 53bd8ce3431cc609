r"""`python -m msjax.predict`: images -> colour label maps, overlays and Cityscapes label ids.

    python -m msjax.predict --checkpoint runs/iw/best \
        --images '~/cityscapes/leftImg8bit/val/*/*.png' --out predictions/ [--label-ids] \
        [--input-size 512|WxH|native] [--flip] [--scales 0.75,1,1.25] [--alpha 0.5]

For every image (any size, PNG or JPEG) it writes NAME_color.png, NAME_overlay.png and,
with --label-ids, NAME_labelIds.png (the benchmark's submission format) under OUT, keeping
the images' relative folders (`msjax.evaluation.predictor`). Nothing lands in OUT until every
image is done (a failure leaves OUT as it was); images under OUT are never inputs.
"""

from __future__ import annotations

import sys

from msjax import cli


def parse_args(argv):
    from msjax.evaluation import inference

    p = cli.argument_parser("python -m msjax.predict", __doc__)
    p.add_argument(
        "--checkpoint", required=True, help="weights folder (metadata.json + variables/)"
    )
    p.add_argument("--images", required=True, help="image file, folder, or quoted glob")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--input-size", default="512", help="network input: height, WxH or native")
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated input scales to average")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight")
    p.add_argument("--label-ids", action="store_true", help="also write Cityscapes label-id PNGs")
    p.add_argument("--precision", default=inference.DEFAULT_PRECISION, choices=inference.PRECISIONS,
                   help="'highest' float32 (default) or 'default' (TF32 on GPUs)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""

    def command():
        args = parse_args(argv)  # inside cli.run: a Ctrl-C while it imports is one line
        from msjax.evaluation import inference, predictor

        written = predictor.predict_files(
            args.checkpoint,
            args.images,
            args.out,
            views=inference.Views.from_flags(args.flip, args.scales),
            input_size=predictor.parse_input_size(args.input_size),
            alpha=args.alpha,
            label_ids=args.label_ids,
            precision=args.precision,
            progress=not args.no_progress,
        )
        print(f"wrote {len(written)} files to {args.out}")

    return cli.run(command, verbose=cli.wants_verbose(sys.argv if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
