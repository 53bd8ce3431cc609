"""Where a jitted step spends its device time: a profiler trace summarised by op and by scope.

    python3 scripts/trace_summary.py TRACE_DIR STEP.hlo.txt --steps 3      # a saved profile

`scripts/bench_step.py --profile DIR` writes both inputs (a `jax.profiler` trace of a few
steps, with the perfetto JSON, and the compiled step's HLO text) and prints this summary.

The trace's device events carry the HLO instruction that launched them (`hlo_op`); the
compiled HLO text gives each instruction its opcode (fusion kind, cuDNN/cuBLAS call) and the
JAX scope it came from (`metadata={op_name=...}`, e.g.
`jit(train_step)/transpose(jvp(DeepLabV2))/layer3_5/conv2/...`). Three Markdown tables come
out: the top instructions by time per step, and the time per part of the step (forward or
backward, stem / layer1-4 / heads / upsampling, convolution / BN / other; losses, the
easy-pixel metrics and the optimiser update), then the time per instruction kind. The first
line compares the summed device time with the wall time per step: a large gap means the
device waits for the host (launch overhead).

Needs only the Python standard library (no TensorFlow, no tensorboard plugin).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
from pathlib import Path

# One instruction of HLO text: `[ROOT] [%]name = shape opcode(operands), attributes`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_OPCODE = re.compile(r"(?:^|[\s}\]])(?P<op>[a-z][\w\-]*)\(")
_BLOCK = re.compile(r"^layer(?P<n>[1-6])(?:_\d+)?$")


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
    """{instruction name: {'kind': opcode or call target, 'scope': JAX op_name or ''}}."""
    table = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m or "(" not in m["rest"]:
            continue
        rest = m["rest"]
        if rest.startswith("("):  # a tuple shape: skip to its closing parenthesis
            depth = 0
            for i, ch in enumerate(rest):
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    rest = rest[i + 1 :]
                    break
        op = _OPCODE.search(rest)
        if not op:
            continue
        kind = op["op"]
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        if target:
            kind = target[1]
        elif kind == "fusion":
            fusion_kind = re.search(r"kind=(k\w+)", rest)
            kind = f"fusion {fusion_kind[1]}" if fusion_kind else kind
        scope = re.search(r'op_name="((?:[^"\\]|\\.)*)"', rest)
        table[m["name"]] = {"kind": kind, "scope": scope[1] if scope else ""}
    return table


def part_of_step(scope: str) -> str:
    """The part of the train step an instruction belongs to, from its JAX scope."""
    if "easy_gradient" in scope:
        return "easy-pixel metrics"
    if any(name in scope for name in ("cross_entropy", "max_square", "entropy", "multi_level")):
        return "losses"
    if "DeepLabV2" not in scope:
        return "optimiser update, other"
    direction = "backward" if "transpose(" in scope else "forward"
    # Under remat the backward holds the recomputed forward pass: `.../transpose(jvp(
    # DeepLabV2))/jvp(DeepLabV2)/checkpoint/[rematted_computation/]layer3_1/...`.
    path = scope.rsplit("DeepLabV2", 1)[1].split("/")[1:]
    path = [p for p in path if p not in ("checkpoint", "rematted_computation")]
    if not path:
        return f"{direction} model, other"
    block = _BLOCK.match(path[0])
    if "->" in path[0]:  # an einsum at the model's top level: the bilinear upsampling
        return f"{direction} upsampling"
    if block is None:
        stage = "stem" if path[0] in ("conv1", "bn1") else "model, other"
        leaf = path[0]
    else:
        stage = "heads (layer5-6)" if block["n"] in "56" else f"layer{block['n']}"
        leaf = path[1] if len(path) > 1 else ""
    if re.fullmatch(r"bn\d*|downsample_1", leaf) or "_update_running_stats" in scope:
        what = "BN"
    elif re.fullmatch(r"conv\d*|downsample_0|branch_?\d*|conv2d_list_?\d*", leaf):
        what = "conv"
    else:
        what = "other"
    return f"{direction} {stage} {what}"


def find_trace(trace_dir: Path) -> Path:
    """The newest perfetto trace JSON under a `jax.profiler.trace` directory."""
    found = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    return found[-1]


def device_op_times(trace_path: Path, module_prefix: str | None = None):
    """Summed duration (us) and count of the traced events per HLO instruction.

    Device processes (`/device:...`) when the trace has any (GPU, TPU); otherwise the host
    events that name an HLO instruction (CPU, where XLA's thunks run on host threads).

    Returns:
      ({hlo_op: [total_us, count]}, busy_us): busy_us is the union of the selected events'
      intervals (streams that overlap count once).
    """
    with gzip.open(trace_path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    process = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in process.items() if name.startswith("/device:")}
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if device_pids and any(e["pid"] in device_pids for e in spans):
        spans = [e for e in spans if e["pid"] in device_pids]
    else:
        spans = [e for e in spans if "hlo_op" in e.get("args", {})]
    if module_prefix:
        spans = [
            e
            for e in spans
            if e.get("args", {}).get("hlo_module", module_prefix).startswith(module_prefix)
        ]
    per_op = collections.defaultdict(lambda: [0.0, 0])
    for e in spans:
        op = e.get("args", {}).get("hlo_op") or f"[kernel] {e.get('name', '?')}"
        per_op[op][0] += float(e["dur"])
        per_op[op][1] += 1
    busy, end = 0.0, float("-inf")
    for e in sorted(spans, key=lambda e: float(e["ts"])):
        start, stop = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return dict(per_op), busy


def summarise(per_op, busy_us, hlo, *, steps: int, wall_ms: float | None = None, top=25):
    """The Markdown summary: top instructions, time per part of the step, busy vs wall."""
    total = sum(t for t, _ in per_op.values()) or 1.0
    rows = sorted(per_op.items(), key=lambda kv: -kv[1][0])
    lines = [
        f"Device time per step: {busy_us / steps / 1e3:.2f} ms busy (union of streams), "
        f"{total / steps / 1e3:.2f} ms summed over {len(per_op)} instructions"
        + (f"; wall time per step {wall_ms:.2f} ms" if wall_ms else "")
        + f" ({steps} traced steps).",
        "",
        "| # | instruction | kind | ms/step | share | launches/step | scope |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (op, (us, count)) in enumerate(rows[:top], 1):
        info = hlo.get(op, {"kind": "?", "scope": ""})
        scope = info["scope"].replace("jit(train_step)/", "")
        scope = scope if len(scope) <= 90 else "..." + scope[-87:]
        lines.append(
            f"| {i} | {op} | {info['kind']} | {us / steps / 1e3:.3f} | {100 * us / total:.1f}% "
            f"| {count / steps:g} | {scope} |"
        )
    parts = collections.defaultdict(float)
    for op, (us, _) in per_op.items():
        parts[part_of_step(hlo.get(op, {}).get("scope", ""))] += us
    lines += ["", "| part of the step | ms/step | share |", "|---|---|---|"]
    for part, us in sorted(parts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {us / steps / 1e3:.3f} | {100 * us / total:.1f}% |")
    kinds = collections.defaultdict(float)
    for op, (us, _) in per_op.items():
        kinds[hlo.get(op, {}).get("kind", "?")] += us
    lines += ["", "| instruction kind | ms/step | share |", "|---|---|---|"]
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"| {kind} | {us / steps / 1e3:.3f} | {100 * us / total:.1f}% |")
    return "\n".join(lines)


def summarise_dir(trace_dir, hlo_text: str, *, steps: int, wall_ms=None, top=25) -> str:
    """`summarise` of the newest trace under `trace_dir`, for the module of `hlo_text`."""
    module = re.search(r"HloModule\s+([\w.\-]+)", hlo_text)
    per_op, busy = device_op_times(find_trace(Path(trace_dir)), module[1] if module else None)
    hlo = hlo_instructions(hlo_text)
    return summarise(per_op, busy, hlo, steps=steps, wall_ms=wall_ms, top=top)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("trace_dir", help="a jax.profiler.trace directory (perfetto trace inside)")
    p.add_argument("hlo", help="the compiled step's HLO text (compiled.as_text())")
    p.add_argument("--steps", type=int, required=True, help="steps run while tracing")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print(summarise_dir(args.trace_dir, Path(args.hlo).read_text(), steps=args.steps, top=args.top))


if __name__ == "__main__":
    main()
