"""Dilated-convolution benchmark: native kernel dilation against space-to-batch, per shape.

    .venv/bin/python scripts/bench_atrous.py --feature 33x65 --iters 3     # CPU, reduced
    python3 scripts/bench_atrous.py --hlo                                   # GPU, full size

The shapes are DeepLabV2's dilated convolutions at the feature size of a GTA5 720x1280 image
(91x161; `--feature` changes it): layer3's 3x3 (256->256, d=2), layer4's 3x3 (512->512,
d=4) and the ASPP branches of the main head (2048->19, d=6, 12, 18, 24) and the aux head
(1024->19, d=6, 12). Each is timed forward, and forward+backward (the VJP for both the
input and the kernel, as training needs), for each implementation and dtype, with
synchronised median timings after a warm-up.

`--hlo` prints each compiled program's convolutions with their `window={...}` attribute: a
window whose `rhs_dilate` is gone but whose size grew to 2d+1 means XLA materialised a
zero-padded kernel (wasted arithmetic); on GPU it also shows which cuDNN call was chosen.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from msjax.models.layers import atrous_conv_space_to_batch  # noqa: E402

# (name, in channels, out channels, dilation)
SHAPES = (
    ("layer3 3x3", 256, 256, 2),
    ("layer4 3x3", 512, 512, 4),
    ("layer6 d6", 2048, 19, 6),
    ("layer6 d12", 2048, 19, 12),
    ("layer6 d18", 2048, 19, 18),
    ("layer6 d24", 2048, 19, 24),
    ("layer5 d6", 1024, 19, 6),
    ("layer5 d12", 1024, 19, 12),
)
IMPLS = ("native", "space_to_batch")


def conv(impl: str, dilation: int):
    """f(x, kernel) for one implementation: stride 1, padding = dilation."""
    if impl == "space_to_batch":
        return lambda x, k: atrous_conv_space_to_batch(x, k, dilation)
    d = dilation
    return lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


def median_ms(fn, args, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def conv_windows(compiled_text: str) -> list[str]:
    """The convolution instructions of a compiled HLO module, shortened to their windows."""
    out = []
    for line in compiled_text.splitlines():
        if "convolution(" not in line and "cudnn$conv" not in line and "__cudnn" not in line:
            continue
        window = re.search(r"window=\{[^}]*\}", line)
        target = re.search(r'custom_call_target="([^"]+)"', line)
        shape = re.search(r"=\s*(\(?[a-z0-9]+\[[^\]]*\][^ ]*)", line)
        out.append(
            " ".join(
                s
                for s in (
                    shape.group(1) if shape else "",
                    window.group(0) if window else "(no window)",
                    target.group(1) if target else "convolution",
                )
                if s
            )
        )
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--feature", default="91x161", help="feature map HxW (91x161 = GTA5 720x1280)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="", help="comma list of shape names to keep (substring)")
    p.add_argument("--hlo", action="store_true", help="print compiled convolution windows")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.feature.split("x"))
    dev = jax.devices()[0]
    device = f"{dev.platform}:{getattr(dev, 'device_kind', '')}"
    shapes = [s for s in SHAPES if not args.only or any(o in s[0] for o in args.only.split(","))]
    rng = np.random.default_rng(0)
    rows = []
    for name, cin, cout, d in shapes:
        for dtype_name in args.dtypes.split(","):
            dtype = jnp.dtype(dtype_name)
            x = jnp.asarray(rng.standard_normal((1, h, w, cin)), dtype)
            k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.01, dtype)
            g = jnp.asarray(rng.standard_normal((1, h, w, cout)), dtype)
            flops = 2 * h * w * cin * cout * 9
            res = {}
            for impl in IMPLS:
                f = conv(impl, d)
                timings = []
                for label, fn, a in (
                    ("fwd", f, (x, k)),
                    ("fwd+bwd", lambda x, k, g, f=f: jax.vjp(f, x, k)[1](g), (x, k, g)),
                ):
                    # One compile per program: time the compiled executable itself.
                    compiled = jax.jit(fn).lower(*a).compile()
                    timings.append(median_ms(compiled, a, args.iters, args.warmup))
                    if args.hlo:
                        print(f"## HLO {name} {dtype_name} {impl} {label}:", flush=True)
                        for c in conv_windows(compiled.as_text()):
                            print(f"##   {c}", flush=True)
                res[impl] = tuple(timings)
            rows.append((name, cin, cout, d, dtype_name, flops, res))
            nf, nb = res["native"]
            sf, sb = res["space_to_batch"]
            print(
                f"# {name} {dtype_name}: native {nf:.2f}/{nb:.2f} ms, "
                f"s2b {sf:.2f}/{sb:.2f} ms (fwd / fwd+bwd)",
                flush=True,
            )

    print_table(rows, device, h, w)


def print_table(rows, device: str, h: int, w: int) -> None:
    """The markdown table of every shape and dtype timed."""
    print(f"\nDilated 3x3 convolutions at feature size {h}x{w}, batch 1, on {device}")
    print(
        "| device | conv | Cin->Cout | d | dtype | native fwd ms | s2b fwd ms | "
        "native fwd+bwd ms | s2b fwd+bwd ms | faster (fwd+bwd) | native TFLOP/s fwd |"
    )
    print("|" + "---|" * 11)
    for name, cin, cout, d, dtype_name, flops, res in rows:
        (nf, nb), (sf, sb) = res["native"], res["space_to_batch"]
        faster = "native" if nb <= sb else "space_to_batch"
        print(
            f"| {device} | {name} | {cin}->{cout} | {d} | {dtype_name} | {nf:.2f} | {sf:.2f} | "
            f"{nb:.2f} | {sb:.2f} | {faster} ({max(nb, sb) / min(nb, sb):.2f}x) | "
            f"{flops / (nf * 1e-3) / 1e12:.2f} |"
        )


if __name__ == "__main__":
    main()
