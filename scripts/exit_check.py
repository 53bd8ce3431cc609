"""Runs each command many times and prints how long each took to exit after its last output.

    .venv/bin/python scripts/exit_check.py --repeat 20 [--commands train,evaluate,predict,prepare]

The hang this looks for (a tf.data iterator destroyed during interpreter shutdown) was seen
once in seven runs; tests/test_exit.py runs each command a few times, this script as many
times as asked. Prints one row per command: runs, failures, and the seconds between the last
line of output and the exit (median and maximum).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--commands", default="train,evaluate,predict,prepare")
    args = p.parse_args(argv)

    from msjax.data.preparation import prepare_one
    from tests.helpers import commands, exit_delay, make_cityscapes, save_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_random_checkpoint(root / "ckpt", num_classes=19)
        make_cityscapes(root / "raw")
        prepare_one(
            "cityscapes", "1024x512", root / "data", raw_dir=root / "raw", split_lists="none"
        )
        for dataset in ("synthetic-source", "synthetic-target"):
            prepare_one(dataset, "128x64", root / "smoke", max_examples=24)
        inputs = {"root": root, "smoke_data": str(root / "smoke")}
        rows = []
        for name in args.commands.split(","):
            delays, failures = [], 0
            for i in range(args.repeat):
                status, delay, _ = exit_delay(commands(inputs, i)[name])
                failures += status != 0
                delays.append(delay)
                print(f"{name} run {i + 1}: exit {status}, {delay:.1f} s after last output",
                      flush=True)  # fmt: skip
            rows.append((name, len(delays), failures, statistics.median(delays), max(delays)))
    print("\n| command | runs | failed | exit after last output, median s | max s |")
    print("|---|---|---|---|---|")
    for name, runs, failed, median, worst in rows:
        print(f"| {name} | {runs} | {failed} | {median:.1f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
