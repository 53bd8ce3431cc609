"""The real-model preflight of paper rows on raw downloads faked at their real sizes.

    .venv/bin/python scripts/preflight_fakes.py [--rows gta2city:iw_multi city2nthu:rome,iw]
        [--steps 3] [--images 2] [--model real|tiny] [--workdir DIR]

Builds GTA5 (1914x1052), SYNTHIA (1280x760), Cityscapes (2048x1024) and NTHU Rome
(2048x1024) raw folders in their download layouts, named as the first entries of the
original's split lists, two pairs per split (`tests.helpers.make_full_size_raw`), then runs
`python -m msjax.reproduce ROW --preflight` for each row in its own process, as a user
would: the stage configs' own DeepLabV2-ResNet-101 from random weights (no --init), the real
crop sizes, subsets of the fakes prepared by the preflight. Prints each row's preflight
tables (device, versions, date and load are in them), then each process's wall time, CPU
time (user + sys) and peak RSS. `--model tiny` checks the script itself in a few minutes.
docs/performance.md ("Preflight at real sizes") reports a run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ROWS = ("gta2city:iw_multi", "city2nthu:rome,iw")


def run_row(row: str, raw: dict, workdir: Path, args) -> dict:
    """Runs one row's preflight in a child process; returns its times and peak RSS."""
    command = [sys.executable, "-m", "msjax.reproduce", row, f"--workdir={workdir}",
               "--preflight", f"--preflight-steps={args.steps}",
               f"--preflight-images={args.images}", f"--preflight-model={args.model}",
               "--no-progress", *(f"--{flag}={path}" for flag, path in raw.items())]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    print(f"\n######## {' '.join(command[1:])}", flush=True)
    status = subprocess.run(command, cwd=ROOT, env=env).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dict(row=row, status=status, wall_s=time.perf_counter() - start, cpu_s=cpu,
                max_rss_gib=after.ru_maxrss / 2**20)  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), help="rows of msjax.reproduce")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--model", default="real", choices=("real", "tiny"))
    p.add_argument("--workdir", default=None, help="keep everything here (default: a temp dir)")
    args = p.parse_args(argv)

    from msjax.data import datasets
    from msjax.reproduction import parse_row
    from tests.helpers import make_full_size_raw

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        start = time.perf_counter()
        folders = make_full_size_raw(root / "raw")
        print(f"fake raw folders in {root / 'raw'}: {time.perf_counter() - start:.0f} s")
        results = []
        for row in args.rows:
            setting = parse_row(row).setting
            names = (setting.source, *setting.targets)
            raw = {datasets.get(n).raw.flag: folders[datasets.get(n).raw.flag] for n in names}
            results.append(run_row(row, raw, root / "paper", args))
    print("\n| row | exit | wall | CPU (user+sys) | peak RSS of the children so far |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['row']} | {r['status']} | {r['wall_s'] / 60:.1f} min | "
              f"{r['cpu_s'] / 60:.1f} min | {r['max_rss_gib']:.1f} GiB |")  # fmt: skip
    return max(r["status"] for r in results)


if __name__ == "__main__":
    sys.exit(main())
