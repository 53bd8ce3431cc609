"""The preflight's report: its tables in Markdown (printed, and preflight.md) and JSON."""

from __future__ import annotations

import json
import os
import time

from msjax import outputs

GIB = 2**30


def device_facts() -> dict:
    """The devices and versions the numbers were measured with."""
    import platform

    import jax
    import jaxlib

    devices = jax.devices()
    return dict(
        platform=devices[0].platform, kind=devices[0].device_kind, count=len(devices),
        jax=jax.__version__, jaxlib=jaxlib.__version__, python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M"), load=_load(),
    )  # fmt: skip


def _load() -> str | None:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # no load average on this platform
        return None


def duration(seconds: float | None) -> str:
    """'42 s', '12.5 min', '3.2 h' or '4.1 d'."""
    if seconds is None:
        return "-"
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172_800)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}" if unit == "s" else f"{seconds / size:.1f} {unit}"
    return f"{seconds / 86400:.1f} d"


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def _hw(hw) -> str:
    """[h, w] -> 'WxH'."""
    return f"{hw[1]}x{hw[0]}" if hw else "-"


def _xla_gib(stats: dict | None) -> str:
    if not stats:
        return "-"
    planned = stats["argument"] + stats["output"] - stats["alias"] + stats["temp"]
    return f"{planned / GIB:.2f}"


def stage_table(stages: list[dict]) -> list[str]:
    """One line per stage: shapes, compile, step, memory, the full stage's projection."""
    lines = [
        "| stage | source batch | target batch | compile s | step s | batch wait s | peak "
        "memory GiB | XLA plan GiB | steps | validations | projected |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in stages:
        v = s["validation"]
        mark = " (incl. compile)" if v["includes_compile"] else ""
        cells = [
            s["stage"], _shape(s["shapes"]["source"]), _shape(s["shapes"]["target"]),
            f"{s['lower_s'] + s['compile_s']:.1f}", f"{s['step_s']:.2f}",
            f"{s['batch_wait_s']:.2f}", f"{s['peak_memory_bytes'] / GIB:.2f}",
            _xla_gib(s["xla_memory"]), f"{s['steps']:,}",
            f"{v['count']} x {v['split_images']:,} x {v['s_per_image']:.2f} s{mark} "
            f"({v['split']})",
            duration(s["projected_s"]["total"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def evaluation_table(evaluations: list[dict]) -> list[str]:
    """One line per protocol and view: sizes, times, the report's projected time."""
    lines = [
        "| protocol | flip | input | labels | images | first batch s | s/image | in the "
        "report | report images | projected |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for e in evaluations:
        mark = " (incl. compile)" if e["includes_compile"] else ""
        hw = [_hw(e["image_hw"]), _hw(e["label_hw"])]
        cells = [
            e["protocol"], "yes" if e["flip"] else "no", *hw, str(e["images"]),
            f"{e['first_batch_s']:.1f}", f"{e['s_per_image']:.2f}{mark}",
            "yes" if e["in_report"] else "no",
            f"{e['checkpoints']} x {e['split_images']:,}", duration(e["projected_s"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _data_lines(found: list[dict]) -> list[str]:
    lines = []
    for f in found:
        text = f["source"] or "not available"
        if f.get("splits"):
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(f["splits"].items())) + ")"
        if f.get("raw_sizes"):
            text += "; raw sizes " + ", ".join(f"{k}: {v}" for k, v in f["raw_sizes"].items())
        lines.append(f"- data {f['dataset']} {f['size']}: {text}")
    return lines


def markdown(record: dict) -> str:
    """preflight.md: the device, the model, the two tables, the data and the notes."""
    d, m, o = record["device"], record["model"], record["options"]
    memory = record["stages"][0]["memory_kind"] if record["stages"] else "-"
    lines = [
        f"# Preflight of {record['row']}",
        "",
        f"- device: {d['count']} x {d['kind']} ({d['platform']}); jax {d['jax']}, jaxlib "
        f"{d['jaxlib']}, Python {d['python']}; {d['date']}, load average {d['load'] or '-'}",
        f"- model: DeepLabV2 blocks {m['blocks']}, width {m['width']}, {m['dtype']}, BN "
        f"{m['bn_mode']}, {m['num_classes']} classes ({m['which']}); first stage from {m['init']}",
        f"- {o['steps']} steps per stage (the first not timed), {o['images']} images per "
        f"evaluation; peak memory: {memory}",
        "",
        *stage_table(record["stages"]),
        "",
        *evaluation_table(record["evaluations"]),
        "",
        f"Projected wall time of the reproduction on this device: "
        f"{duration(record['projected_total_s'])} (the stages and the report's evaluations).",
        "",
        *_data_lines(record["data"]),
        *(f"- note: {n}" for n in record["notes"]),
    ]
    return "\n".join(lines) + "\n"


def write(record: dict, folder: str) -> dict[str, str]:
    """Writes preflight.json and preflight.md into `folder`; returns their paths."""
    paths = {
        "json": os.path.join(folder, "preflight.json"),
        "markdown": os.path.join(folder, "preflight.md"),
    }
    outputs.write_text(paths["json"], json.dumps(record, indent=2) + "\n")
    outputs.write_text(paths["markdown"], markdown(record))
    return paths
