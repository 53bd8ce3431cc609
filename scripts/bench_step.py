"""Train-step benchmark: msjax's jitted adaptation step next to a PyTorch step, same device.

    .venv/bin/python scripts/bench_step.py --height 256 --width 512            # CPU, reduced
    python3 scripts/bench_step.py --dtype float32,bfloat16 --torch fp32,bf16   # GPU, full size

Each row runs in its own subprocess (clean peak-memory figures, a timeout per row, and JAX's
GPU memory pool never competes with PyTorch's). A row builds the full DeepLabV2 and the real
step from `msjax.training.step.make_train_step` (per-image BN, MaxSquare target loss,
lambda 0.1, faithful SGD groups from `msjax.optim`), jits it once with the state
donated and msjax's compiler options (`--keep-barriers off` drops them),
feeds synthetic tensors of the training shapes (no TensorFlow, no data sets), and times
`--steps` synchronised iterations after `--warmup`. The PyTorch rows train
`tests.reference.deeplabv2_torch.DeepLabV2Torch` (the reference model the parity tests use)
with the same losses and SGD groups, in float32 and, on a GPU, under `torch.autocast` bf16.

Printed per row: device, implementation, dtype, shapes, compile time, median ms/iteration
(with min-max), images/s (two images per pair), FLOPs per iteration (the pre-optimisation
HLO's count, i.e. the model's arithmetic, and the compiled program's count), MFU against
`--peak-tflops`, peak memory (device peak on GPU; XLA's buffer plan and the process's peak
RSS on CPU), and each row's speed ratio to the PyTorch float32 row. `--profile DIR` then
traces three more steps of the first msjax row and prints where their device time goes
(`scripts/trace_summary.py`; the trace and DIR/profile.md stay in DIR).

Faithful defaults: GTA5 720x1280 source + Cityscapes 512x1024 target, 1 pair, 19 classes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR = 2.5e-4


def parse_size(text: str) -> tuple[int, int]:
    """'720x1280' -> (720, 1280): height x width."""
    h, w = text.lower().split("x")
    return int(h), int(w)


def synthetic_batch(rng, pairs: int, source, target, classes: int):
    """Float32 NHWC images in the Caffe-normalised range and labels with some ignore pixels."""
    import numpy as np

    def image(size):
        return (rng.standard_normal((pairs, *size, 3)) * 50.0).astype(np.float32)

    labels = rng.integers(0, classes, (pairs, *source)).astype(np.int32)
    labels[:, :8] = 255  # a band of ignored pixels, as real label maps have
    return {"image": image(source), "label": labels}, {"image": image(target)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cost(analysis) -> float | None:
    # cost_analysis() is a dict on recent jax, a list of one dict on older ones.
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    return float(flops) if flops and flops > 0 else None


def _time_steps(run_once, sync, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        run_once()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run_once()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def count_flops(jaxpr) -> float:
    """Multiply-add FLOPs (2 per MAC) of every convolution and dot in a (closed) jaxpr.

    Counted on the traced program, before any backend rewrite, so the figure is the same on
    every device (XLA's own count on GPU omits the cuDNN/cuBLAS calls). Elementwise work is
    left out: it is a few percent of this network's arithmetic.
    """
    import numpy as np
    from jax.extend import core

    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            out = eqn.outvars[0].aval
            dn = eqn.params["dimension_numbers"]
            k_in = rhs.shape[dn.rhs_spec[1]]
            k_spatial = np.prod([rhs.shape[i] for i in dn.rhs_spec[2:]])
            total += 2.0 * np.prod(out.shape) * k_in * k_spatial
        elif name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            contract = np.prod([lhs.shape[i] for i in lc])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * contract
        for sub in core.jaxprs_in_params(eqn.params):
            total += count_flops(sub)
    return float(total)


def model_flop_count(lowered, fn, fn_args) -> float | None:
    """FLOPs of the program before backend rewrites: XLA's count of the lowered HLO.

    Some backends (jax 0.11 on GPU) give no count for the lowered program; the same program
    lowered for the CPU is then counted (the arithmetic does not depend on the device), and
    as a last resort the jaxpr's convolutions and dots (an over-count: it includes code that
    XLA removes as dead, such as the unused aux head).
    """
    import jax

    flops = _cost(lowered.cost_analysis())
    if flops:
        return flops
    try:
        cpu = jax.jit(fn).trace(*fn_args).lower(lowering_platforms=("cpu",))
        flops = _cost(cpu.cost_analysis())
    except Exception:  # noqa: BLE001 - an optional figure; fall through to the jaxpr count
        flops = None
    return flops or count_flops(jax.make_jaxpr(fn)(*fn_args).jaxpr)


def jax_model(args):
    """The DeepLabV2 of one msjax row's configuration."""
    import jax.numpy as jnp

    from msjax.models import DeepLabV2

    return DeepLabV2(
        num_classes=args.classes,
        blocks=tuple(args.blocks),
        width=args.base_width,
        bn_mode=args.bn_mode,
        atrous=args.atrous,
        dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype],
        remat=args.remat,
    )


def jax_initial_state(model):
    """Initialised variables and the faithful SGD groups; returns (optimizer, train state)."""
    import jax
    import jax.numpy as jnp

    from msjax import optim
    from msjax.training import step as ts

    # One jitted init: a single compile instead of one RNG kernel per parameter shape.
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 65, 65, 3)), train=False))(
        jax.random.key(0)
    )
    optim_cfg = dict(
        optim.ORIGINAL_OPTIM,
        lr=LR,
        rules=optim.faithful_rules(aspp_branches=2, aux_head_trained=False),
    )
    tx, _ = optim.make_optimizer(optim_cfg, variables["params"])
    # Jitted too: eager tx.init compiles one tiny kernel per parameter shape (slow on GPU).
    return tx, jax.jit(lambda v: ts.create_train_state(v, tx))(variables)


def plan_bytes(compiled) -> int | None:
    """XLA's buffer plan of a compiled program: arguments, outputs and temporaries, less
    what donation aliases; None where the backend gives no memory analysis."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )


def jax_figures(step, compiled, metrics, setup: dict) -> dict:
    """An msjax row's figures after its timed steps; `setup` holds those of `jax_setup`."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return dict(
        impl="msjax",
        device=f"{device.platform}:{getattr(device, 'device_kind', '')}",
        jax=jax.__version__,
        init_s=setup["init_s"],
        compile_s=setup["compile_s"],
        model_flops=setup["model_flops"],
        xla_flops=_cost(compiled.cost_analysis()),
        plan_bytes=setup["plan_bytes"],
        device_peak_bytes=stats.get("peak_bytes_in_use"),
        rss_mb=peak_rss_mb(),
        loss=float(metrics["loss"]),
        # Entries in the jit cache after all steps: 1 means no recompilation.
        compiles=step._cache_size() if hasattr(step, "_cache_size") else None,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


def jax_setup(args) -> dict:
    """Builds the msjax step for one configuration; returns its runner and static figures."""
    import jax
    import numpy as np

    from msjax import xla
    from msjax.configlib import ORIGINAL_LOSS
    from msjax.methods import METHODS
    from msjax.training import step as ts

    model = jax_model(args)
    t0 = time.perf_counter()
    tx, state = jax_initial_state(model)
    setup = dict(init_s=time.perf_counter() - t0)

    rng = np.random.default_rng(0)
    source, target = synthetic_batch(rng, args.pairs, args.source, args.target, args.classes)
    source, target = jax.device_put((source, target))
    train_step = ts.make_train_step(model, tx, METHODS["maxsquare"], ORIGINAL_LOSS)
    options = xla.compiler_options(jax.default_backend()) if args.keep_barriers == "on" else None
    step = jax.jit(train_step, donate_argnums=(0,), compiler_options=options)

    t0 = time.perf_counter()
    lowered = step.lower(state, source, target)
    compiled = lowered.compile()
    setup["compile_s"] = time.perf_counter() - t0
    setup["model_flops"] = model_flop_count(lowered, train_step, (state, source, target))
    setup["plan_bytes"] = plan_bytes(compiled)
    holder = {"state": state}

    def run_once():
        holder["state"], holder["metrics"] = step(holder["state"], source, target)

    def sync():
        jax.block_until_ready((holder["state"], holder.get("metrics")))

    def finish() -> dict:
        return jax_figures(step, compiled, holder["metrics"], setup)

    return dict(run_once=run_once, sync=sync, finish=finish, warmup=args.warmup, compiled=compiled)


def jax_row(args) -> dict:
    """Builds and times the msjax step for one (dtype, atrous, remat) configuration."""
    r = jax_setup(args)
    times = _time_steps(r["run_once"], r["sync"], r["warmup"], args.steps)
    row = dict(r["finish"](), times_ms=times)
    if args.profile:
        try:
            row["profile"] = profile_steps(r, Path(args.profile), statistics.median(times))
        except Exception as e:  # noqa: BLE001 - the timing row is worth keeping without it
            row["profile"] = f"profile failed: {type(e).__name__}: {e}"
    return row


def profile_steps(runner, out: Path, wall_ms: float, steps: int = 3) -> str:
    """Traces `steps` more steps with `jax.profiler`; writes and returns the op summary.

    Written to `out`: the trace (perfetto JSON and XPlane, for Perfetto or TensorBoard),
    `step.hlo.txt` (the compiled step) and `profile.md` (`scripts/trace_summary.py`).
    """
    import jax
    import trace_summary

    out.mkdir(parents=True, exist_ok=True)
    hlo_text = runner["compiled"].as_text()
    (out / "step.hlo.txt").write_text(hlo_text)
    runner["sync"]()
    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        for _ in range(steps):
            runner["run_once"]()
        runner["sync"]()
    summary = trace_summary.summarise_dir(out, hlo_text, steps=steps, wall_ms=wall_ms)
    (out / "profile.md").write_text(summary + "\n")
    return summary


def torch_device():
    """(cuda?, device) for the PyTorch rows, with the settings a user would run them under."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        # cuDNN autotuning on (TF32 convolutions are PyTorch's default for cuDNN, as XLA's
        # default precision is TF32 on this GPU).
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    return cuda, torch.device("cuda" if cuda else "cpu")


def torch_model_and_optimizer(args, dev):
    """The PyTorch reference model in training mode and its faithful SGD groups."""
    import torch

    from tests.reference.deeplabv2_torch import DeepLabV2Torch

    model = DeepLabV2Torch(
        num_classes=args.classes, blocks=tuple(args.blocks), width=args.base_width
    ).to(dev)
    model.train()
    # Faithful policy: stem BN affine frozen, heads at 10x; the aux head and ASPP branches
    # 3-4 get no gradient (the loss never touches them), so SGD skips them.
    for p in model.bn1.parameters():
        p.requires_grad_(False)
    heads = [p for n, p in model.named_parameters() if n.startswith(("layer5", "layer6"))]
    head_ids = {id(p) for p in heads}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.SGD(
        [{"params": backbone, "lr": LR}, {"params": heads, "lr": 10 * LR}],
        lr=LR,
        momentum=0.9,
        weight_decay=5e-4,
    )
    return model, opt


def torch_batch(args, dev):
    """The synthetic batch of `synthetic_batch` as NCHW tensors: source images and labels,
    target images."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    source, target = synthetic_batch(rng, args.pairs, args.source, args.target, args.classes)
    xs = torch.from_numpy(source["image"].transpose(0, 3, 1, 2).copy()).to(dev)
    ys = torch.from_numpy(source["label"]).long().to(dev)
    xt = torch.from_numpy(target["image"].transpose(0, 3, 1, 2).copy()).to(dev)
    return xs, ys, xt


def torch_setup(args) -> dict:
    """Builds the PyTorch reference step (fp32, or autocast bf16); returns its runner."""
    import torch
    import torch.nn.functional as F

    from msjax.configlib import ORIGINAL_LOSS

    cuda, dev = torch_device()
    model, opt = torch_model_and_optimizer(args, dev)
    xs, ys, xt = torch_batch(args, dev)
    bf16 = args.dtype == "bfloat16"
    holder = {}

    def run_once():
        opt.zero_grad(set_to_none=True)
        # Batch size 1 per forward, as the original: per-image BN for any number of pairs.
        for i in range(args.pairs):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                main_s, _ = model(xs[i : i + 1])
                loss_s = F.cross_entropy(main_s.float(), ys[i : i + 1], ignore_index=255)
                main_t, _ = model(xt[i : i + 1])
                p = F.softmax(main_t.float(), dim=1)
                loss_t = -torch.mean(p * p) / 2
                loss = (loss_s + ORIGINAL_LOSS["lambda_target"] * loss_t) / args.pairs
            loss.backward()
        opt.step()
        holder["loss"] = loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run_once()  # first step: cuDNN autotuning and allocator warm-up, reported as "compile"
    sync()
    compile_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def finish() -> dict:
        return torch_figures(dev, compile_s, float(holder["loss"]) * args.pairs)

    return dict(run_once=run_once, sync=sync, finish=finish, warmup=max(args.warmup - 1, 0))


def torch_figures(dev, compile_s: float, loss: float) -> dict:
    """A PyTorch row's figures after its timed steps."""
    import torch

    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return dict(
        impl="torch",
        device=f"{dev.type}:{name}",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        compile_s=compile_s,
        device_peak_bytes=torch.cuda.max_memory_allocated() if cuda else None,
        rss_mb=peak_rss_mb(),
        loss=loss,
    )


def torch_row(args) -> dict:
    """Times the PyTorch reference model on the same step."""
    r = torch_setup(args)
    times = _time_steps(r["run_once"], r["sync"], r["warmup"], args.steps)
    return dict(r["finish"](), times_ms=times)


def paired_rows(args) -> list[dict]:
    """msjax and PyTorch in one process, timed in alternation (a shared, noisy CPU).

    Each timed msjax step is followed by a timed PyTorch step, so both see the same load;
    the per-pair ratio is then far steadier than the ratio of two separate runs.
    """
    jx = jax_setup(args)
    tr = torch_setup(argparse.Namespace(**dict(vars(args), dtype="float32")))
    for r in (jx, tr):
        for _ in range(r["warmup"]):
            r["run_once"]()
        r["sync"]()
    times = {"jax": [], "torch": []}
    for _ in range(args.steps):
        for name, r in (("jax", jx), ("torch", tr)):
            t0 = time.perf_counter()
            r["run_once"]()
            r["sync"]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return [
        dict(jx["finish"](), times_ms=times["jax"], paired=True),
        dict(tr["finish"](), times_ms=times["torch"], paired=True),
    ]


def child_args(args, **overrides) -> list[str]:
    """The command line of a row's subprocess."""
    a = dict(vars(args), **overrides)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", a["row"]]
    size = {k: "x".join(map(str, a[k])) for k in ("source", "target")}
    cmd += ["--source", size["source"], "--target", size["target"]]
    cmd += ["--dtype", a["dtype"], "--atrous", a["atrous"], "--bn-mode", a["bn_mode"]]
    cmd += ["--keep-barriers", a["keep_barriers"]]
    cmd += ["--pairs", str(a["pairs"]), "--steps", str(a["steps"]), "--warmup", str(a["warmup"])]
    cmd += ["--classes", str(a["classes"]), "--base-width", str(a["base_width"])]
    cmd += ["--blocks", *map(str, a["blocks"])]
    if a["remat"]:
        cmd.append("--remat")
    if a.get("profile") and a["row"] == "jax":
        cmd += ["--profile", a["profile"]]
    return cmd


def run_child(cmd, timeout: float) -> list[dict]:
    """Runs one row's subprocess; returns its JSON rows, or [{'error': ...}]."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return [{"error": f"timed out after {timeout:.0f} s"}]
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("ROWS "):
            return json.loads(line[5:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return [{"error": f"exit {proc.returncode}: " + " | ".join(tail)}]


def fmt_bytes(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def table(rows: list[dict], args) -> str:
    """The printed Markdown table."""
    torch_fp32 = [
        r for r in rows if r["impl"] == "torch" and r["dtype"] == "float32" and "times_ms" in r
    ]
    torch_fp32 = torch_fp32[0] if torch_fp32 else None
    ref_ms = statistics.median(torch_fp32["times_ms"]) if torch_fp32 else None
    head = (
        "| device | impl | dtype | atrous | barriers | remat | pairs | source+target | compile s | "
        "ms/iter (min-max) | img/s | model TFLOP | XLA TFLOP | MFU | peak memory | "
        "speed-up vs torch fp32 |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        shapes = f"{args.source[0]}x{args.source[1]}+{args.target[0]}x{args.target[1]}"
        cfg = (
            r["impl"],
            r["dtype"],
            r.get("atrous", "-"),
            r.get("keep_barriers", "-"),
            r.get("remat", "-"),
            r["pairs"],
        )
        first = " | ".join(str(c) for c in cfg)
        if "error" in r:
            lines.append(f"| {r.get('device', '?')} | {first} | {shapes} | ERROR: {r['error']} |")
            continue
        ms = statistics.median(r["times_ms"])
        spread = f"{ms:.1f} ({min(r['times_ms']):.1f}-{max(r['times_ms']):.1f})"
        imgs = 2 * r["pairs"] * 1e3 / ms
        flops = r.get("model_flops")
        mfu = "-"
        if flops and args.peak_tflops:
            mfu = f"{100 * flops / (ms * 1e-3) / (args.peak_tflops * 1e12):.1f}%"
        if r.get("device_peak_bytes") is not None:
            mem = fmt_bytes(r["device_peak_bytes"]) + " device"
        elif r.get("plan_bytes") is not None:
            mem = f"{fmt_bytes(r['plan_bytes'])} plan, {r['rss_mb'] / 1024:.1f} GiB RSS"
        else:
            mem = f"{r['rss_mb'] / 1024:.1f} GiB RSS"
        ratio = f"{ref_ms / ms:.2f}x" if ref_ms else "-"
        tf = lambda x: f"{x / 1e12:.3g}" if x else "-"
        lines.append(
            f"| {r['device']} | {first} | {shapes} | {r['compile_s']:.1f} | {spread} | "
            f"{imgs:.2f} | "
            f"{tf(flops)} | {tf(r.get('xla_flops'))} | {mfu} | {mem} | {ratio} |"
        )
    paired = [r for r in rows if r.get("paired") and "times_ms" in r]
    if len(paired) == 2:
        jx, tr = sorted(paired, key=lambda r: r["impl"] != "msjax")
        ratios = [t / j for j, t in zip(jx["times_ms"], tr["times_ms"], strict=True)]
        lines.append(
            f"\nPaired steps (alternating msjax/torch, {len(ratios)} pairs): msjax speed-up vs "
            f"torch fp32 = {statistics.median(ratios):.2f}x median "
            f"({min(ratios):.2f}-{max(ratios):.2f}); msjax time / torch time = "
            f"{1 / statistics.median(ratios):.2f}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; --height and --width override the sizes' heights and widths."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", type=parse_size, default=(720, 1280), help="HxW (GTA5 720x1280)")
    p.add_argument("--target", type=parse_size, default=(512, 1024), help="HxW (Cityscapes)")
    p.add_argument("--height", type=int, help="sets both source and target height")
    p.add_argument("--width", type=int, help="sets both source and target width")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, or a comma list")
    p.add_argument("--atrous", default="native", help="native, space_to_batch, auto, or list")
    p.add_argument("--bn-mode", default="per_image", choices=("per_image", "batch", "frozen"))
    p.add_argument("--pairs", type=int, default=1, help="source+target pairs per step")
    p.add_argument("--remat", action="store_true", help="rematerialise each bottleneck")
    p.add_argument("--steps", type=int, default=20, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--torch", default="fp32,bf16", help="torch rows: fp32, bf16, none")
    p.add_argument("--no-jax", action="store_true", help="torch rows only")
    p.add_argument("--peak-tflops", type=float, help="peak for MFU (H100 SXM bf16 dense: 989)")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--blocks", type=int, nargs=4, default=(3, 4, 23, 3))
    p.add_argument("--base-width", type=int, default=64, help="layer1 width (64)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    p.add_argument("--json", help="also write all rows to this file")
    p.add_argument(
        "--profile",
        help="folder: after timing, trace 3 more steps of the (first) msjax row with "
        "jax.profiler and print the top ops (scripts/trace_summary.py)",
    )
    p.add_argument(
        "--paired",
        action="store_true",
        help="one msjax and one torch fp32 row in one process, steps alternating (noisy CPU)",
    )
    p.add_argument(
        "--keep-barriers",
        default="on",
        help="msjax rows compiled with msjax's XLA options (on: msjax.xla.compiler_options), "
        "without (off), or both (on,off)",
    )
    p.add_argument("--row", choices=("jax", "torch", "paired"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.height:
        args.source, args.target = (args.height, args.source[1]), (args.height, args.target[1])
    if args.width:
        args.source, args.target = (args.source[0], args.width), (args.target[0], args.width)
    return args


def row_specs(args) -> list[dict]:
    """One spec per row subprocess, in the order they run. `--paired` replaces the other
    rows: it sets `args.torch` to 'none' and `args.no_jax`."""
    specs = []
    if args.paired:
        args.torch, args.no_jax = "none", True
        dtype, atrous, kb = (v.split(",")[0] for v in (args.dtype, args.atrous, args.keep_barriers))
        specs.append(dict(row="paired", dtype=dtype, atrous=atrous, keep_barriers=kb))
    if not args.no_jax:
        for dtype in args.dtype.split(","):
            for atrous in args.atrous.split(","):
                for kb in args.keep_barriers.split(","):
                    first = not any(spec["row"] == "jax" for spec in specs)
                    specs.append(
                        dict(
                            row="jax",
                            dtype=dtype,
                            atrous=atrous,
                            keep_barriers=kb,
                            profile=args.profile if first else None,
                        )
                    )
    for kind in [t for t in args.torch.split(",") if t and t != "none"]:
        dtype = {"fp32": "float32", "bf16": "bfloat16"}[kind]
        specs.append(dict(row="torch", dtype=dtype, atrous="native", keep_barriers="-"))
    return specs


def run_rows(specs: list[dict], args) -> list[dict]:
    """Runs each spec's subprocess; prints each row as it comes and returns them all."""
    rows = []
    for spec in specs:
        if spec["row"] == "torch" and spec["dtype"] == "bfloat16" and not _torch_has_cuda():
            continue  # autocast bf16 is a GPU comparison (docs/performance.md's protocol)
        t0 = time.perf_counter()
        results = run_child(child_args(args, **spec), args.timeout)
        for result in results:
            is_jax = result.get("impl", "msjax" if spec["row"] != "torch" else "torch") == "msjax"
            result.update(
                dtype=spec["dtype"] if is_jax or spec["row"] == "torch" else "float32",
                pairs=args.pairs,
                atrous=spec["atrous"] if is_jax else "-",
                keep_barriers=spec["keep_barriers"] if is_jax else "-",
                remat=("yes" if args.remat else "no") if is_jax else "-",
                impl="msjax" if is_jax else "torch",
            )
            rows.append(result)
            shown = {k: v for k, v in result.items() if k not in ("times_ms", "profile")}
            print(
                f"# {spec['row']} {spec['dtype']} {spec['atrous']} {spec['keep_barriers']}: "
                f"{json.dumps(shown)} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return rows


def report(rows: list[dict], args) -> None:
    """Prints the table and any profile; writes the rows to `--json` when given."""
    print(table(rows, args))
    for row in rows:
        if row.get("profile"):
            print(f"\nProfile of the msjax {row['dtype']} step ({args.profile}):\n")
            print(row["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.row:  # inside a row's subprocess
        if args.row == "paired":
            results = paired_rows(args)
        else:
            results = [jax_row(args) if args.row == "jax" else torch_row(args)]
        print("ROWS " + json.dumps(results), flush=True)
        return
    report(run_rows(row_specs(args), args), args)


def _torch_has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
