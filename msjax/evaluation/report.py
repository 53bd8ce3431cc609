"""The report of an evaluation: a table beside the paper's row, Markdown, JSON and a chart.

Every report names its protocol and test-time views, and the paper's column for the setting
(`msjax.evaluation.published`), with a note where the two were not measured the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from msjax import methods
from msjax.evaluation import inference, published


def _pct(value) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def _published_for(results: dict, method: str | None):
    """The paper's row of `method`; without one, of the method the weights were trained with
    (msjax records it), else the paper's best on that data set."""
    trained = results.get("weights", {}).get("method")
    if method is None and trained in published.METHODS:
        method = trained
    found = published.result(results["dataset"], results["scores"]["num_classes"], method)
    return found or published.result(results["dataset"], results["scores"]["num_classes"])


def views_note(views: dict) -> str:
    """How the test-time views of a result relate to the published numbers'."""
    if views["text"] not in (inference.SINGLE_VIEW.describe(), inference.FLIP_VIEW.describe()):
        return "multi-scale test-time augmentation: the original never uses it"
    flipped = views.get("flip", views["text"] == inference.FLIP_VIEW.describe())
    done = "with flip" if flipped else "without flip"
    return f"evaluated {done}; {published.FLIP_NOTE}"


def report_rows(results: dict, method: str | None = None) -> tuple[list, list[str]]:
    """Table rows (name, msjax %, paper % or '') and the header lines of a report."""
    s = results["scores"]
    pub = _published_for(results, method)
    per_class = pub.per_class if pub and pub.per_class else [None] * s["num_classes"]
    rows = [
        (name, _pct(v), "" if p is None else f"{p:.1f}")
        for name, v, p in zip(s["classes"], s["iou"], per_class, strict=True)
    ]
    rows.append(
        (f"mIoU ({s['num_classes']} classes)", _pct(s["miou"]), f"{pub.miou:.1f}" if pub else "")
    )
    if "miou13" in s:
        rows.append(("mIoU* (13 of 16)", _pct(s["miou13"]), f"{pub.miou13:.1f}" if pub else ""))
    rows.append(("pixel accuracy", _pct(s["pixel_accuracy"]), ""))
    header = [
        f"msjax evaluation of {results['checkpoint']}",
        f"data: {results['dataset']} {results['split']}, {results['num_images']} images; "
        f"protocol {results['protocol']}: {results['protocol_text']}; "
        f"{results['views']['text']}",
    ]
    if pub:
        header.append(f"paper column: {pub.label}, evaluated with the original protocol")
        if results["protocol"] != "original":
            header.append("note: the paper's numbers use the original protocol (labels at "
                          "1024x512), not this one: compare with care")  # fmt: skip
        header.append(f"note: {views_note(results['views'])}")
        others = [
            f"{methods.METHODS[r.method].title} {r.miou:.1f}"
            + (f" / {r.miou13:.1f}" if r.miou13 is not None else "")
            for r in published.results(results["dataset"], s["num_classes"])
        ]
        header.append("paper mIoU" + (" (16 / 13 classes)" if "miou13" in s else "") + ": "
                      + ", ".join(others))  # fmt: skip
    return rows, header


def format_table(results: dict, method: str | None = None) -> str:
    """The plain-text report printed by the CLI."""
    rows, header = report_rows(results, method)
    width = max(len(r[0]) for r in rows) + 2
    lines = [*header, "", f"{'class':<{width}}{'msjax %':>9}{'paper %':>9}"]
    lines += [f"{n:<{width}}{a:>9}{b:>9}" for n, a, b in rows]
    lines.append(f"({results['seconds']:.1f} s)")
    return "\n".join(lines)


def markdown_table(results: dict, method: str | None = None) -> str:
    """The same report as a Markdown table (results.md)."""
    rows, header = report_rows(results, method)
    lines = [f"- {h}" for h in header] + [
        "",
        "| class | msjax IoU % | paper IoU % |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {a} | {b} |" for n, a, b in rows]
    return "\n".join(lines) + "\n"


REPORT_FILES = ("results.json", "results.md", "iou.png")


def write_report(results: dict, out_dir, method: str | None = None) -> dict[str, Path]:
    """Writes results.json, results.md and iou.png into out_dir; returns their paths."""
    from msjax.evaluation import visualize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "iou.png"}
    pub = _published_for(results, method)
    record = dict(results, published=dataclasses.asdict(pub) if pub else None)
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(results, method))
    s = results["scores"]
    title = (f"{results['dataset']} {results['split']}, protocol {results['protocol']}, "
             f"{results['views']['text']}: mIoU {_pct(s['miou'])}")  # fmt: skip
    visualize.iou_bar_chart(
        paths["chart"],
        s["classes"],
        [None if v is None else 100 * v for v in s["iou"]],
        published=pub.per_class if pub and pub.per_class else None,
        title=title,
        published_label=pub.label if pub else "published",
    )
    return paths
