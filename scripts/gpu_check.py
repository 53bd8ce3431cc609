"""Every GPU measurement of docs/performance.md in one call, inside a fixed time budget.

    PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out "$OUT" --budget 420

For a lent GPU machine (jax with CUDA and torch installed; nothing is installed here, and
nothing imports TensorFlow or msjax.data). Stages, each a subprocess with a timeout cut to
what is left of `--budget` seconds (a stage that cannot start with at least `--min-stage`
seconds left is skipped):

1. full-resolution train step (720x1280 + 512x1024, 1 pair) with the current defaults
   (atrous='auto'): msjax bf16 against PyTorch fp32 and autocast bf16, then a
   `jax.profiler` trace of the bf16 step summarised by op and by part of the step
   (OUT/profile_bf16/profile.md, `scripts/trace_summary.py`);
2. msjax bf16 with 4 pairs per step (per-image BN; throughput and memory);
3. msjax fp32;
4. msjax bf16 with 8 pairs, then 2 pairs;
5. full-model bf16 and TF32 logits against float32 at HIGHEST precision (one 512x1024 image);
6. msjax bf16 with frozen BN (what per-image BN statistics cost);
7. msjax bf16 with 8 pairs and remat (memory, for a GPU where 8 pairs do not fit).

Without `--skip-measured` the native-atrous stages run first (their results, with native
dilated convolutions, are in docs/performance.md): msjax bf16 + PyTorch fp32, msjax fp32 +
PyTorch autocast bf16, and the dilated-convolution micro-benchmark with the compiled
convolution windows. Each full-model stage spends most of its time compiling (compile
times: docs/performance.md); `--budget` skips the last stages first. `--smoke` runs every
stage with tiny shapes, to check this script on a CPU.

Everything printed goes to OUT/gpu_check.log as well, with each stage's JSON rows beside it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def parity(size=(512, 1024)) -> None:
    """Full-model logits: bf16 and default-precision fp32 against fp32 at HIGHEST precision.

    Weights: the PyTorch reference's He-scaled random weights (tests.reference), converted;
    evaluation mode (running statistics). Training-mode logits of a *random* network are
    chaotic under per-image BN (a tiny input perturbation changes them far more than
    round-off; docs/parity.md), so they say nothing about precision;
    tests/test_precision.py checks training by its loss.
    """
    sys.path.insert(0, str(ROOT))
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from msjax.models import DeepLabV2
    from msjax.weights import names
    from tests.reference.deeplabv2_torch import DeepLabV2Torch, randomize_

    sd = randomize_(DeepLabV2Torch(num_classes=19), 0).state_dict()
    variables = names.variables_from_state_dict({k: v.numpy() for k, v in sd.items()})
    model = DeepLabV2(num_classes=19)
    images = jnp.asarray(np.random.RandomState(0).randn(1, *size, 3) * 50, jnp.float32)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def forward(dtype, precision, variables, images):
        with jax.default_matmul_precision(precision):
            return model.clone(dtype=dtype).apply(variables, images, train=False)

    ref = forward(jnp.float32, "highest", variables, images)
    for name, dtype, precision in (
        ("float32 default precision", jnp.float32, "default"),
        ("bfloat16", jnp.bfloat16, "default"),
    ):
        out = forward(dtype, precision, variables, images)
        errs = []
        for a, b in zip(out, ref, strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            errs.append(np.linalg.norm(a - b) / np.linalg.norm(b))
            errs.append(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        print(
            f"PARITY {jax.devices()[0].device_kind} {size[0]}x{size[1]} eval {name} vs fp32 "
            f"HIGHEST: main {errs[0]:.2e} (max {errs[1]:.2e}), aux {errs[2]:.2e} "
            f"(max {errs[3]:.2e})  [|a-b|_2/|b|_2, max|a-b|/max|b|]",
            flush=True,
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"))
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all stages")
    p.add_argument("--min-stage", type=float, default=45.0)
    p.add_argument("--peak-tflops", default="989", help="H100 SXM dense bf16")
    p.add_argument("--smoke", action="store_true", help="tiny shapes: test this script on a CPU")
    p.add_argument(
        "--skip-measured",
        action="store_true",
        help="skip the native-atrous stages (step rows and the atrous micro-benchmark "
        "already in docs/performance.md)",
    )
    p.add_argument("--stage", help=argparse.SUPPRESS)
    return p.parse_args()


def bench_command(args) -> list[str]:
    """The `scripts/bench_step.py` command every step stage extends (tiny with --smoke)."""
    bench = [PY, "scripts/bench_step.py", "--peak-tflops", args.peak_tflops, "--timeout", "170"]
    if args.smoke:
        bench += ["--height", "64", "--width", "128", "--blocks", "1", "1", "1", "1"]
        bench += ["--base-width", "8", "--steps", "2", "--warmup", "1"]
    return bench


def stages(args, out: Path) -> list[tuple[str, float, list[str]]]:
    """(name, timeout cap in seconds, command) of each stage, in the order they run."""
    bench = bench_command(args)
    parity_args = ["--smoke"] if args.smoke else []

    def step(name, cap, *flags, json_name, torch="none"):
        return (name, cap, [*bench, *flags, "--torch", torch, "--json", str(out / json_name)])

    # In order of what docs/performance.md's targets need most; `--budget` cuts from the end.
    planned = [
        # The current defaults (atrous='auto' = space-to-batch on GPU, closed-form BN
        # backward, 1x1 convs as matmuls) against PyTorch fp32 and autocast bf16: the
        # headline rows, and a profile of the bf16 step (top ops, time per part).
        step("step_bf16_auto_profile_vs_torch", 320, "--dtype", "bfloat16", "--atrous", "auto",
             "--profile", str(out / "profile_bf16"), torch="fp32,bf16", json_name="step_auto.json"),
        # Throughput at more than one pair per step (per-image BN), no remat: by the 1-pair
        # peak of docs/performance.md, 8 should fit 80 GB (remat: the last stage).
        step("step_bf16_4pairs", 170, "--dtype", "bfloat16", "--atrous", "auto", "--pairs", "4",
             "--steps", "10", json_name="step_4pairs.json"),
        step("step_fp32_auto", 130, "--dtype", "float32", "--atrous", "auto",
             json_name="step_fp32.json"),
        step("step_bf16_8pairs", 200, "--dtype", "bfloat16", "--atrous", "auto", "--pairs", "8",
             "--steps", "6", "--timeout", "190", json_name="step_8pairs.json"),
        step("step_bf16_2pairs", 150, "--dtype", "bfloat16", "--atrous", "auto", "--pairs", "2",
             "--steps", "10", json_name="step_2pairs.json"),
        ("parity", 80, [PY, "scripts/gpu_check.py", "--stage", "parity", *parity_args]),
        step("step_bf16_frozen_bn", 120, "--dtype", "bfloat16", "--atrous", "auto",
             "--bn-mode", "frozen", json_name="step_frozen_bn.json"),
        step("step_bf16_8pairs_remat", 200, "--dtype", "bfloat16", "--atrous", "auto",
             "--pairs", "8", "--remat", "--steps", "6", "--timeout", "190",
             json_name="step_8pairs_remat.json"),
    ]  # fmt: skip
    if args.skip_measured:
        return planned
    return measured_stages(args, bench, out) + planned


def measured_stages(args, bench: list[str], out: Path) -> list[tuple[str, float, list[str]]]:
    """The native dilated convolutions' stages: the rows and the dilated-convolution
    windows in docs/performance.md, run first."""
    feature = "9x17" if args.smoke else "91x161"
    step_a = [*bench, "--dtype", "bfloat16", "--torch", "fp32", "--json", str(out / "step_a.json")]
    step_b = [*bench, "--dtype", "float32", "--torch", "bf16", "--json", str(out / "step_b.json")]
    return [
        ("step_bf16_vs_torch_fp32", 200, step_a),
        ("step_fp32_and_torch_bf16", 200, step_b),
        ("atrous", 100, [PY, "scripts/bench_atrous.py", "--feature", feature, "--iters", "20",
                         "--hlo", "--only", "layer3,layer4,d6,d12", "--dtypes", "bfloat16"]),
    ]  # fmt: skip


def open_log(out: Path):
    """A `say(text)` that prints and appends to OUT/gpu_check.log."""
    log = open(out / "gpu_check.log", "a")

    def say(text: str) -> None:
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    return say


def say_machine(say) -> None:
    """Logs the date, Python, and the GPU with its driver and memory, for the rows' record."""
    say(f"=== {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, python {sys.version.split()[0]}")
    try:
        query = "--query-gpu=name,driver_version,memory.total"
        smi = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True)
        say("=== " + smi.stdout.decode().strip())
    except OSError:
        say("=== no nvidia-smi")


def run_stage(cmd: list[str], timeout: float) -> tuple[str, str]:
    """Runs one stage; returns its output (the tail when it failed) and its status."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A new session per stage, so a timeout kills the bench's row subprocesses too
    # (an orphaned row would keep the GPU busy for the next stage).
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        text, _ = proc.communicate(timeout=timeout)
        status = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        status = "TIMEOUT"
    if proc.returncode and status != "TIMEOUT":
        text = text[-6000:]
    return text, status


def run_stages(stages: list, args, out: Path, say, start: float) -> None:
    """Runs the stages in order within `--budget` seconds from `start`, logging each."""
    for name, cap, cmd in stages:
        left = args.budget - (time.time() - start)
        if left < args.min_stage:
            say(f"=== {name}: SKIPPED ({left:.0f} s left)")
            continue
        timeout = min(cap, left)
        say(f"=== {name} (timeout {timeout:.0f} s, {time.time() - start:.0f} s elapsed)")
        t0 = time.time()
        text, status = run_stage(cmd, timeout)
        if name == "atrous":
            (out / "atrous_hlo.txt").write_text(text)
            text = "\n".join(line for line in text.splitlines() if not line.startswith("##"))
        say(text.rstrip())
        say(f"=== {name}: {status} in {time.time() - t0:.0f} s")


def main() -> None:
    args = parse_args()
    if args.stage == "parity":
        parity((65, 97) if args.smoke else (512, 1024))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say = open_log(out)
    start = time.time()
    say_machine(say)
    run_stages(stages(args, out), args, out, say, start)
    say(f"=== total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
