"""Preparing data sets: raw download folders (or the generator) -> prepared TFDS data sets.

`prepare_one(dataset, size, data_dir, raw_dir)` builds one size of one data set and
returns a summary; `format_summary` turns it into the closing report of
`python -m msjax.prepare` (pairs prepared, the list that defined each split and how many
listed pairs were missing on disk, pairs skipped with the reason, the stored label
histogram, the raw image sizes). Every build goes into a temporary folder beside the
prepared one and is swapped in only when complete (`build_and_swap`), so a failed or
interrupted run, with or without --overwrite, leaves the prepared data as it was.
"""

import collections
import contextlib
import difflib
import io
import os
import re
import shutil
from pathlib import Path

from msjax import locks, outputs
from msjax.data import datasets, labels, layouts
from msjax.errors import DataError

MAX_LISTED = 10  # skipped files listed per reason in the summary
WAIT_S = 30 * 60  # how long a preparation waits for another process preparing the same


def default_sizes(dataset: str) -> list[str]:
    """The sizes `msjax.prepare` prepares when none is given: the data set's training size."""
    return [datasets.get(dataset).sizes[0]]


SPLIT_NAMES = ("train", "val", "test")
_SPLIT_NAME = re.compile(r"(train|val|test)(_\w+)?")


def parse_split_lists(items) -> dict[str, Path]:
    """{split: list file} of the --split-list SPLIT=PATH arguments.

    A split is named train, val or test, or one of them with a suffix (train_small,
    val_rome): the trainer reads `train` and evaluates `val` or `test` by default, and a
    misspelt name ('tarin') would otherwise prepare a split that nothing reads.
    """
    out = {}
    for item in items or []:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise DataError(f"--split-list {item!r}: expected SPLIT=PATH, e.g. train=train.txt.")
        if not _SPLIT_NAME.fullmatch(split):
            close = difflib.get_close_matches(split, SPLIT_NAMES, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"--split-list {item!r}: {split!r} is not a split name: use train, val or "
                f"test, or one of them with a suffix (train_small, val_rome).{hint}"
            )
        out[split] = Path(path)
    return out


def _progress(desc: str, enabled: bool):
    from tqdm import tqdm

    def wrap(iterable, total):
        return tqdm(iterable, total=total, desc=desc, unit="img", disable=not enabled)

    return wrap


def prepare_one(
    dataset: str,
    size: str,
    data_dir,
    raw_dir=None,
    split_lists="original",
    overwrite: bool = False,
    progress: bool = False,
    num_workers: int | None = None,
    max_examples: int | None = None,
    skip_bad: bool = False,
    refuse_if_busy: bool = False,
) -> dict:
    """Prepares one size of one data set.

    Args:
      dataset: a data set name (msjax.data.datasets: gta5, nthu-rome, synthetic-fog-2, ...).
      size: one of its sizes ('1280x720', 'full').
      data_dir, raw_dir: output folder (TFDS data_dir); the raw download (not synthetic sets).
      split_lists: which lists define the splits: "original" (the original's lists, shipped
        with msjax: GTA5 and SYNTHIA train/val, Cityscapes train/val, NTHU train/test),
        "none" or None (the folders' own splits; every GTA5/SYNTHIA pair in train), or a
        mapping split -> list file (only those splits). Ignored by the synthetic sets.
      overwrite, progress: rebuild even if prepared; show a progress bar.
      num_workers: decoding threads (default: CPU count, at most 16).
      max_examples: keep at most this many examples per split (quick tests and demos).
      skip_bad: skip (and list) unreadable pairs and listed pairs missing on disk.
      refuse_if_busy: when another process prepares this size, raise WorkdirError at once
        (the prepare command) instead of waiting for it (up to WAIT_S) and reusing its result.

    Returns:
      A summary dict: dataset, size, path, splits (name -> count), split_lists, skipped
      ((path, reason) list), resized_labels, histogram (256 pixel counts of train ids),
      outside_pixels, outside_files, raw_sizes, already (True if nothing was built).
    """
    from msjax.data import builders

    entry = datasets.get(dataset)
    datasets.check_size(entry, size)
    layout = _raw_layout(entry, raw_dir, split_lists, skip_bad)

    options = dict(config=size, layout=layout, progress=_progress(f"{dataset}/{size}", progress),
                   num_workers=num_workers, skip_bad=skip_bad)  # fmt: skip

    def make_builder(root):
        return builders.builder_class(dataset)(data_dir=os.fspath(root), **options)

    builder = make_builder(Path(data_dir).expanduser().absolute())
    summary = dict(dataset=dataset, size=size, path=builder.data_dir, already=False)
    # One preparation at a time per data set size (msjax.locks): the prepare command refuses
    # a size another process prepares; a trainer generating synthetic data waits for it.
    folder = Path(builder.data_dir).parent
    with locks.hold(folder, "data set folder", wait_s=0 if refuse_if_busy else WAIT_S):
        if (Path(builder.data_dir) / "dataset_info.json").is_file() and not overwrite:
            builder = make_builder(Path(data_dir).expanduser().absolute())  # as now on disk
            return {**summary, **_prepared_facts(builder)}
        download_config = _download_config(raw_dir, max_examples)
        builder = build_and_swap(make_builder, Path(builder.data_dir), download_config)
    summary.update(_build_facts(builder, layout))
    return summary


def _prepared_facts(builder) -> dict:
    """The summary of a size prepared before: its splits and what defined them."""
    return dict(
        already=True,
        splits={k: v.num_examples for k, v in builder.info.splits.items()},
        split_lists=(builder.info.metadata or {}).get("split_lists"),
    )


def _download_config(raw_dir, max_examples: int | None):
    """TFDS's build options: the raw folder as its manual dir, nothing fetched or counted."""
    import tensorflow_datasets as tfds

    return tfds.download.DownloadConfig(
        manual_dir=os.fspath(raw_dir) if raw_dir else None,
        try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
        max_examples_per_split=max_examples,
    )


def _raw_layout(dataset: datasets.DataSet, raw_dir, split_lists, skip_bad: bool):
    """The raw folder's pairs per split (None for generated data sets)."""
    if dataset.generated:
        return None
    if raw_dir is None:
        raise DataError(f"{dataset.name}: RAW_DIR is required ({dataset.raw.expected}).")
    return layouts.discover(dataset, raw_dir, split_lists=split_lists, skip_missing=skip_bad)


def _build_facts(builder, layout) -> dict:
    """What a finished build saw, for the summary (see `prepare_one`'s Returns)."""
    from msjax.data import builders

    st = builder.stats
    return dict(
        splits={k: v.num_examples for k, v in builder.info.splits.items()},
        skipped=(list(layout.skipped) if layout else [])
        + [(path, "unreadable pair (--skip-bad)") for path, _ in st.bad],
        bad_messages=[msg for _, msg in st.bad],
        split_lists=builders.split_lists_metadata(layout),
        resized_labels=list(st.resized_labels),
        histogram=st.histogram,
        outside_pixels=st.outside_pixels,
        outside_files=st.outside_files,
        raw_sizes=st.raw_sizes,
    )


def _lists_line(s: dict) -> str:
    """Which list defined each split, and how many listed pairs were missing on disk."""
    lists = s.get("split_lists")
    if datasets.get(s["dataset"]).generated:
        return "splits: generated"
    if lists == "none":
        return "splits: as the raw folders give them (no split lists)"
    if not lists:
        return "splits: not recorded (prepared by an msjax without split lists)"
    return "splits from lists: " + "; ".join(f"{k} = {v}" for k, v in sorted(lists.items()))


def build_and_swap(make_builder, final: Path, download_config):
    """Builds a data set beside its prepared folder `final` and swaps it in only on success.

    TFDS would delete an existing prepared folder before rebuilding it (so a failed rebuild
    lost the data set). Instead the builder writes under a temporary data dir beside `final`
    (`msjax.outputs.staged_folder`); once the build is complete its version folder takes
    the place of `final` in one step. A failed or interrupted build leaves `final` as it was.

    Args:
      make_builder: data dir -> a builder of the data set and config.
      final: DATA/<builder>/<size>/<version>, prepared or not.
      download_config: TFDS's DownloadConfig (manual dir, caps, no statistics).

    Returns:
      The builder that built the data (its stats and info describe it).
    """
    import tensorflow_datasets as tfds

    with outputs.staged_folder(final, "prepared data set") as tmp:
        builder = make_builder(tmp / "tfds")
        # TFDS's own bars and "Downloading and preparing..." lines would only confuse:
        # nothing is downloaded, and our bar counts images.
        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(download_config=download_config)
        built = Path(builder.data_dir)
        for entry in built.iterdir():  # the version folder's files become the staged folder
            os.rename(entry, tmp / entry.name)
        shutil.rmtree(tmp / "tfds")
    return builder


def format_summary(s: dict) -> str:
    """Human-readable closing summary of `prepare_one`."""
    lines = [f"{s['dataset']} {s['size']} -> {s['path']}"]
    splits = ", ".join(f"{k}: {v}" for k, v in sorted(s["splits"].items()))
    if s["already"]:
        return (
            lines[0]
            + f"\n  already prepared ({splits}); pass --overwrite to rebuild.\n  "
            + _lists_line(s)
        )
    lines.append(f"  pairs prepared: {splits}")
    lines.append("  " + _lists_line(s))
    by_reason = collections.defaultdict(list)
    for path, reason in s["skipped"]:
        by_reason[reason].append(path)
    lines.append(f"  pairs skipped: {len(s['skipped'])}")
    for reason, paths in sorted(by_reason.items()):
        more = f" (+{len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else ""
        lines.append(
            f"    {reason} ({len(paths)}): " + ", ".join(map(str, paths[:MAX_LISTED])) + more
        )
    for message in s.get("bad_messages", [])[:3]:
        lines.append(f"    {message}")
    resized = s.get("resized_labels", [])
    if resized:
        more = f" (+{len(resized) - MAX_LISTED} more)" if len(resized) > MAX_LISTED else ""
        lines.append(
            f"  labels of another size than their image, resized (nearest) as the original "
            f"does ({len(resized)}): " + ", ".join(map(str, resized[:MAX_LISTED])) + more
        )
    if s["outside_pixels"]:
        lines.append(
            f"  label values outside the table: {s['outside_pixels']} pixels in "
            f"{s['outside_files']} files (stored as ignore, 255)"
        )
    hist = s["histogram"]
    total = max(int(hist.sum()), 1)
    names = {i: n for i, n in enumerate(labels.CLASS_NAMES_19)} | {labels.IGNORE: "ignore"}
    cells = [f"{names.get(i, i)} {100 * hist[i] / total:.1f}%" for i in range(256) if hist[i]]
    lines.append("  stored label histogram (train ids): " + ", ".join(cells))
    sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in s["raw_sizes"].most_common())
    lines.append(f"  raw image sizes: {sizes}")
    return "\n".join(lines)
