r"""`python -m msjax.convert`: a PyTorch .pth file -> a msjax weights folder.

    python -m msjax.convert SRC.pth OUT_DIR
        [--layout auto|original|released|deeplab-init|torchvision] [--num-classes N]
        [--aspp-branches 2|4] [--seed 0] [--force] [--verbose]

Reads the original model's state_dict, its released training checkpoints, the DeepLab
ImageNet init or a torchvision ResNet-101 (`msjax.weights.pytorch`), and writes an Orbax
checkpoint plus metadata.json that `config.init.checkpoint`, `msjax.evaluate` and
`msjax.predict` take. Needs torch: `pip install -e '.[convert]'`.
"""

from __future__ import annotations

import sys

from msjax import cli


def parse_args(argv):
    from msjax.weights.pytorch import LAYOUTS

    parser = cli.argument_parser("python -m msjax.convert", __doc__)
    parser.add_argument("src", help="PyTorch .pth file")
    parser.add_argument("out_dir", help="folder to write (Orbax checkpoint + metadata.json)")
    parser.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    parser.add_argument(
        "--num-classes", type=int, default=None, help="classes of fresh heads (init files)"
    )
    parser.add_argument("--aspp-branches", type=int, default=2, choices=(2, 4))
    parser.add_argument("--seed", type=int, default=0, help="seed of freshly initialised heads")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def check_args(args) -> None:
    """Raises ConfigError for an argument only the command line restricts.

    The library (`msjax.weights.pytorch.convert`) checks the rest before reading anything.
    """
    from msjax.data.labels import VALID_NUM_CLASSES
    from msjax.errors import ConfigError

    if args.num_classes is not None and args.num_classes not in VALID_NUM_CLASSES:
        raise ConfigError(
            f"--num-classes {args.num_classes}: must be one of {sorted(VALID_NUM_CLASSES)}, "
            "the class sets msjax trains and evaluates (19 GTA5 -> Cityscapes, 16 SYNTHIA -> "
            "Cityscapes, 13 cross-city)."
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""

    def command():
        args = parse_args(argv)  # inside cli.run: a Ctrl-C while it imports is one line
        from msjax.weights.pytorch import convert

        check_args(args)
        convert(
            args.src,
            args.out_dir,
            layout=args.layout,
            num_classes=args.num_classes,
            aspp_branches=args.aspp_branches,
            seed=args.seed,
            force=args.force,
        )

    return cli.run(command, verbose=cli.wants_verbose(sys.argv if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
