"""Scoring a row's checkpoints under every protocol, with and without flip, and the report.

Each checkpoint of the plan (best/ and final/ of the row's run, the paper's first) is
evaluated under the `original` protocol and, where the full-size labels are prepared, the
`full` one, each with and without the horizontal flip: the original's evaluation command
uses --flip True and does not say whether the published numbers did. Every evaluation
writes its own msjax.evaluate report in REPORT/eval/<checkpoint>_<protocol>[_flip]/ and is
not run again when its results are there for the same checkpoint step (so an interrupted
reproduction resumes here too). REPORT/report.md and report.json put them beside the
paper's row and name the rule that chose each checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os

from msjax import weights
from msjax.data import builders
from msjax.errors import ConfigError
from msjax.evaluation import inference, protocol, published, report
from msjax.reproduction import data
from msjax.reproduction.plan import Plan

VIEWS = (inference.SINGLE_VIEW, inference.FLIP_VIEW)


def protocols(plan: Plan) -> tuple[list[str], list[str]]:
    """(protocols to score, a note for each protocol left out and why).

    'original' is always scored (data.py prepares what it reads); every other protocol of
    msjax.evaluation.protocol where the labels it compares with are prepared.
    """
    done, notes = ["original"], []
    for name in protocol.PROTOCOLS:
        if name in done:
            continue
        try:
            setting = data.eval_setting(plan, name)
        except ConfigError as e:
            notes.append(f"{name}: {e}")
            continue
        dataset = setting.dataset.name
        if setting.label_size in builders.prepared_sizes(dataset, plan.data_dir):
            done.append(name)
        else:
            notes.append(
                f"{name}: {dataset} {setting.label_size} is not prepared in {plan.data_dir}; "
                f"prepare it (python -m msjax.prepare {dataset} RAW --data-dir "
                f"{plan.data_dir} --size {setting.label_size}) and run the same command again "
                "to add it"
            )
    return done, notes


def _paper(plan: Plan) -> published.Published | None:
    row = plan.row
    n = plan.config.model.num_classes
    return published.result(row.target, n, row.method.name, setting=row.setting.name)


def _evaluate_one(plan: Plan, path: str, name: str, step: int, size: str, protocol_name, views,
                  progress):  # fmt: skip
    """The results of one evaluation: reused from its folder when done for this step."""
    tag = f"{name}_{protocol_name}" + ("_flip" if views.flip else "")
    if size != data.eval_sizes(plan)[0]:
        tag += f"_{size}"
    out = os.path.join(plan.report_dir, "eval", tag)
    saved = os.path.join(out, "results.json")
    if os.path.isfile(saved):
        with open(saved) as f:
            results = json.load(f)
        if results.get("checkpoint_step") == step:
            return results, saved
    dataset, _ = data.eval_input(plan)
    results = protocol.evaluate(
        path,
        dataset,
        plan.data_dir,
        protocol=protocol_name,
        views=views,
        input_size=size,
        batch_size=plan.config.eval.batch_size,
        progress=progress,
    )
    results["checkpoint_step"] = step
    report.write_report(results, out, plan.row.method.name if plan.row.published else None)
    return results, saved


def evaluate_checkpoints(plan: Plan, progress: bool = True) -> tuple[list[dict], list[str]]:
    """Scores every checkpoint of the plan; returns (entries, protocols left out)."""
    names, notes = protocols(plan)
    entries, by_step = [], {}
    runs = [(s, p, v) for s in data.eval_sizes(plan) for p in names for v in VIEWS]
    for ckpt in plan.checkpoints:
        step = weights.read_metadata(ckpt.path).get("step")
        for size, protocol_name, views in runs:
            key = (step, size, protocol_name, views.flip)
            if key not in by_step:  # else best/ is final/ (same step): the same weights
                by_step[key] = _evaluate_one(
                    plan, ckpt.path, ckpt.name, step, size, protocol_name, views, progress
                )
            results, saved = by_step[key]
            scores = results["scores"]
            entries.append(
                dict(checkpoint=ckpt.name, step=step, input_size=size, protocol=protocol_name,
                     flip=views.flip, miou=scores["miou"], miou13=scores.get("miou13"),
                     num_images=results["num_images"], results=saved)
            )  # fmt: skip
    return entries, notes


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def report_record(plan: Plan, summaries: dict, entries: list[dict], notes: list[str]) -> dict:
    """The JSON report: row, paper number, chain, checkpoint rules, evaluations, notes."""
    paper = _paper(plan)
    chain = [
        dict(
            stage=s.name,
            title=s.title,
            folder=os.path.join(plan.chain_dir, s.name),
            init=s.config.init.checkpoint or "random initialisation",
            **{
                k: summaries.get(s.name, {}).get(k)
                for k in ("eval", "select", "best_score", "best_step", "final_step")
            },
        )  # fmt: skip
        for s in plan.stages
    ]
    notes = list(notes) + [f"flip: {published.FLIP_NOTE}; both are reported"]
    if any(c.target_labels for c in plan.checkpoints):
        notes.append(
            "best/ of an adaptation run is chosen with the target's labels (the split it "
            "validates on), the original's practice: numbers of best/ use target labels for "
            "selection; final/ does not"
        )
    sizes = data.eval_sizes(plan)
    if len(sizes) > 1:
        notes.append(
            f"input {sizes[1]}: the size this method trains and validates its target at; the "
            f"original's run picks its best checkpoint there, while its README's evaluation "
            f"command (tools/evaluate.py, default --target_crop_size) scores at {sizes[0]}. "
            "Which one the published number used is not stated: a best_MIou recorded during "
            f"training would be the {sizes[1]} figure, a run of the README's command the "
            f"{sizes[0]} one; both are reported"
        )
    if plan.row.smoke:
        notes.append("smoke run: tiny model, two steps per run, synthetic data; its numbers "
                     "are not comparable with the paper's")  # fmt: skip
    return dict(
        row=plan.row.name,
        smoke=plan.row.smoke,
        published=dataclasses.asdict(paper) if paper else None,
        paper_protocol="original (image bicubic and labels nearest at 1024x512, one scale; "
        "flip or not: not stated)",
        source=plan.source,
        chain=chain,
        checkpoints=[dataclasses.asdict(c) for c in plan.checkpoints],
        evaluations=entries,
        notes=notes,
    )


def _table(record: dict) -> list[str]:
    """The evaluations as Markdown table lines, the paper's number(s) in the last column(s)."""
    pub = record["published"] or {}
    has13 = any(e["miou13"] is not None for e in record["evaluations"])
    metrics = ["miou", "miou13"] if has13 else ["miou"]
    names = {"miou": "mIoU16 %" if has13 else "mIoU %", "miou13": "mIoU13 %"}
    paper = [f"{pub[m]:.1f}" if pub.get(m) is not None else "-" for m in metrics]
    header = ["checkpoint", "step", "input", "protocol", "flip"] + [names[m] for m in metrics]
    header += [f"paper {names[m]}" for m in metrics]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|---:|---|---|---|" + "---:|" * 2 * len(metrics),
    ]
    for e in record["evaluations"]:
        cells = [e["checkpoint"], str(e["step"]), e.get("input_size", "-"), e["protocol"],
                 "yes" if e["flip"] else "no"]  # fmt: skip
        cells += [_pct(e[m]) for m in metrics] + paper
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(record: dict) -> str:
    """report.md: the row's numbers beside the paper's, the rules and notes."""
    pub = record["published"]
    paper = (
        "no published number"
        if pub is None
        else f"{pub['miou']:.1f}"
        + (f" / {pub['miou13']:.1f} (mIoU16 / mIoU13)" if pub.get("miou13") is not None else "")
    )
    lines = [f"# Reproduction of {record['row']}", ""]
    lines.append(f"- paper: {paper}; protocol {record['paper_protocol']}")
    if record["source"]:
        lines.append(f"- adapted from: {record['source']}")
    for stage in record["chain"]:
        lines.append(f"- stage {stage['title']} -> {stage['folder']}")
    for ckpt in record["checkpoints"]:
        lines.append(f"- checkpoint `{ckpt['name']}`: {ckpt['rule']}")
    lines += ["", *_table(record), ""] + [f"- note: {n}" for n in record["notes"]]
    return "\n".join(lines) + "\n"


def write(plan: Plan, record: dict) -> dict[str, str]:
    """Writes report.json and report.md into the plan's report folder; returns their paths."""
    os.makedirs(plan.report_dir, exist_ok=True)
    paths = {
        "json": os.path.join(plan.report_dir, "report.json"),
        "markdown": os.path.join(plan.report_dir, "report.md"),
    }
    with open(paths["json"], "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown(record))
    return paths
