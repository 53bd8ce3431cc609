r"""`python -m msjax.prepare`: turn a raw data set folder into a prepared TFDS data set, once.

    python -m msjax.prepare gta5 ~/raw/GTA5 --data-dir ~/msjax_data               # 1280x720
    python -m msjax.prepare cityscapes ~/raw/cityscapes --data-dir ~/msjax_data \
        --size 1024x512 --size full
    python -m msjax.prepare nthu-rome ~/raw/NTHU --data-dir ~/msjax_data      # one city
    python -m msjax.prepare nthu ~/raw/NTHU --data-dir ~/msjax_data           # all four
    python -m msjax.prepare synthetic --data-dir ~/msjax_data   # generated, no raw folder

DATASET is a data set of `msjax.data.datasets` or a group of them ('nthu', 'synthetic',
'synthetic-fog'); `--size` defaults to the data set's training size.

The splits are the original's by default: its split lists ship with msjax (GTA5 and SYNTHIA
train/val, Cityscapes train/val, NTHU train/test; what each holds: docs/data.md).
`--split-list SPLIT=PATH` gives your own lists instead (entries in the original's id format or
file stems); `--split-lists none` uses the folders' own splits (every GTA5/SYNTHIA pair in
train). A listed pair missing on disk is an error unless `--skip-bad`.

Each run shows a progress bar and closes with a summary: pairs found per split, the list that
defined each split and how many listed pairs were missing, pairs skipped and why, the
histogram of stored train ids, the raw image sizes (`msjax.data.preparation`).
A bad input stops with one message naming the path and exit status 2.
"""

from __future__ import annotations

import sys

from msjax import cli


def parse_args(argv):
    parser = cli.argument_parser("python -m msjax.prepare", __doc__)
    parser.add_argument(
        "dataset",
        help="gta5, synthia, cityscapes, nthu-CITY (rome, rio, tokyo, taipei), "
        "synthetic-DOMAIN (source, target, fog-1..3, noise-1..3), or a group of them: nthu, "
        "synthetic, synthetic-fog, synthetic-noise",
    )
    parser.add_argument("raw_dir", nargs="?", help="raw folder in the download layout")
    parser.add_argument("--data-dir", required=True, help="where prepared data sets go")
    parser.add_argument(
        "--size",
        action="append",
        help="WxH size to prepare, or 'full' for the native size (repeatable); default: the "
        "data set's training size",
    )
    parser.add_argument(
        "--split-list",
        action="append",
        metavar="SPLIT=PATH",
        help="a split's list file (repeatable); replaces the original's lists: only the "
        "listed splits are prepared. Entries: the original's ids (GTA5 '1' = 00001.png) or "
        "file stems",
    )
    parser.add_argument(
        "--split-lists",
        choices=("original", "none"),
        default="original",
        help="without --split-list: 'original' (default) uses the original's lists shipped "
        "with msjax; 'none' uses the folders' own splits (every GTA5/SYNTHIA pair in train)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild sizes already prepared")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and list unreadable pairs, and listed pairs missing on disk, instead of "
        "stopping",
    )
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument(
        "--max-examples", type=int, default=None, help="at most this many examples per split"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return parser.parse_args(argv)


def check_args(args, members) -> None:
    """Raises ConfigError naming the first argument that cannot work, before any work.

    Args:
      args: the parsed arguments.
      members: the data sets DATASET names (msjax.data.datasets.members).
    """
    from pathlib import Path

    from msjax import outputs
    from msjax.data import datasets
    from msjax.errors import ConfigError

    outputs.check_output_folder(args.data_dir, "--data-dir")
    for entry in members:
        for size in args.size or []:
            datasets.check_size(entry, size, "--size")
    generated = all(entry.generated for entry in members)
    if generated and args.raw_dir is not None:
        raise ConfigError(
            f"{args.dataset} is generated, not read: RAW_DIR ({args.raw_dir}) must not be given."
        )
    if not generated and args.raw_dir is not None:
        raw = Path(args.raw_dir).expanduser()
        if not str(args.raw_dir).strip():
            raise ConfigError("RAW_DIR is empty: give the raw download folder.")
        if raw.exists() and not raw.is_dir():
            raise ConfigError(f"RAW_DIR {raw} is a file; give the raw download folder.")
    for flag, value in (("--workers", args.workers), ("--max-examples", args.max_examples)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be an integer >= 1 (or left out).")


def prepare(args) -> None:
    """Prepares every size of every data set the arguments name, with a summary after each."""
    from msjax.data import datasets, preparation
    from msjax.errors import DataError

    members = datasets.members(args.dataset)
    check_args(args, members)
    # TensorFlow prints C++ banners at import that no flag silences.
    with cli.quiet_native_stderr():
        from msjax.data import builders

    split_lists = preparation.parse_split_lists(args.split_list)
    if split_lists and args.split_lists == "none":
        raise DataError("--split-lists none and --split-list exclude each other; pass one.")
    split_lists = split_lists or args.split_lists
    for entry in members:
        for size in args.size or preparation.default_sizes(entry.name):
            try:
                summary = preparation.prepare_one(
                    entry.name,
                    size,
                    args.data_dir,
                    raw_dir=args.raw_dir,
                    split_lists=split_lists,
                    overwrite=args.overwrite,
                    progress=not args.no_progress,
                    num_workers=args.workers,
                    max_examples=args.max_examples,
                    skip_bad=args.skip_bad,
                    refuse_if_busy=True,
                )
            except builders.BadPairError as e:
                hint = "Pass --skip-bad to skip such pairs and list them in the summary instead."
                raise DataError(f"{e} {hint}") from e
            print(preparation.format_summary(summary), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli.quiet_tensorflow()
    # Parsing inside cli.run too: a Ctrl-C while it imports is one line, not a traceback.
    verbose = cli.wants_verbose(sys.argv if argv is None else argv)
    return cli.run(lambda: prepare(parse_args(argv)), verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())
