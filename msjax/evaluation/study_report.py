"""The study's results: read from its runs, paired statistics, Markdown tables and figures.

`collect(config, workdir)` reads every finished run of `msjax.training.study` (results.json,
metrics.jsonl, the source scores); `markdown(...)` writes the tables of docs/study.md;
`plot_curves` and `plot_gradient_shares` draw the figures. Differences between methods are
paired by seed (every method of a seed starts from the same source model), with a 95%
Student-t interval of the mean paired difference.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from msjax.methods import METHODS
from msjax.training.study import method_lambdas, run_name, study_runs

# The paper's claims (b) and (c): IW improves on MaxSquare, Multi on IW.
EXTENDS = {"iw": "maxsquare", "iw_multi": "iw"}
# Rare classes of the synthetic scenes (about 1-3% of the pixels each in every domain).
RARE_CLASSES = ("person", "car", "vegetation")
SOURCE_KEYS = ("source_val_miou", "miou", "easy_pixels", "easy_accuracy", "uncertain_accuracy",
               "confident_errors", "grad_share_minent", "grad_share_maxsquare",
               "grad_ratio_minent_maxsquare", "grad_ratio_iw_maxsquare")  # fmt: skip
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_interval(differences) -> tuple[float, float, float] | None:
    """(mean, low, high): a 95% t interval of the mean of paired differences; None if n < 2."""
    d = np.asarray(differences, np.float64)
    if d.size < 2:
        return None
    half = t_quantile(d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _adaptation_record(folder: str, source_miou: float) -> dict:
    """Final scores, the mIoU curve (step 0: the source model) and the gradient shares."""
    with open(os.path.join(folder, "results.json")) as f:
        summary = json.load(f)
    lines = _read_jsonl(os.path.join(folder, "metrics.jsonl"))
    curve = [(0, source_miou)] + [(r["step"], r["val/miou"]) for r in lines if "val/miou" in r]
    keys = ("easy_pixels", "easy_grad_minent", "easy_grad_maxsquare")
    shares = [(r["step"], *(r[k] for k in keys)) for r in lines if keys[0] in r]
    return dict(miou=summary["last_miou"], class_iou=summary["last_class_iou"], curve=curve,
                shares=shares)  # fmt: skip


def collect(config, workdir: str) -> list[dict]:
    """One record per finished run and shift: seed, shift, method, lam, miou, class_iou, ...

    Source models give one record per shift (method 'source', their scores on that shift's
    target val, with the confidence statistics, and 'source_val_miou'). Unfinished runs and
    adaptations whose source scores are missing are left out.
    """
    records = []
    for run in study_runs(config, workdir):
        folder = os.path.join(workdir, run.stage.name)
        if not os.path.isfile(os.path.join(folder, "results.json")):
            continue
        base = dict(seed=run.seed, method=run.method, lam=run.lam)
        if run.shift is None:
            with open(os.path.join(folder, "results.json")) as f:
                source_val = json.load(f)["last_miou"]
            for shift in config.study.shifts:
                path = os.path.join(folder, "scores", f"{shift}.json")
                if os.path.isfile(path):
                    with open(path) as f:
                        scores = json.load(f)
                    records.append(dict(base, shift=shift, source_val_miou=source_val, **scores))
            continue
        source_scores = os.path.join(workdir, run_name(run.seed, "source_multi"), "scores",
                                     f"{run.shift}.json")  # fmt: skip
        if not os.path.isfile(source_scores):
            continue
        with open(source_scores) as f:
            source_miou = json.load(f)["miou"]
        records.append(dict(base, shift=run.shift, **_adaptation_record(folder, source_miou)))
    return records


def title(method: str) -> str:
    return METHODS[method].title


def _select(records, shift, method, lam) -> dict[int, dict]:
    return {
        r["seed"]: r
        for r in records
        if r["shift"] == shift and r["method"] == method and (r["lam"] == lam or lam is None)
    }


def _fmt_interval(interval) -> str:
    if interval is None:
        return "-"
    mean, low, high = (100 * v for v in interval)
    mark = " *" if low > 0 or high < 0 else ""
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def _fmt_diff(rows: dict, base: dict) -> str:
    seeds = sorted(set(rows) & set(base))
    if not seeds:
        return "-"
    d = [rows[s]["miou"] - base[s]["miou"] for s in seeds]
    if len(d) == 1:
        return f"{100 * d[0]:+.2f}"
    return _fmt_interval(paired_interval(d))


def method_rows(config, records: list[dict]) -> list[tuple[str, str, float | None]]:
    """(shift, method, lam) of every table row, in the config's order."""
    rows = []
    for shift in config.study.shifts:
        rows.append((shift, "source_multi", None))
        rows += [(shift, method, lam) for method, lam in method_lambdas(config.study)]
    return [r for r in rows if _select(records, *r)]


def markdown(config, records: list[dict]) -> str:
    """The results tables: per shift and method, target mIoU over seeds and paired gains."""
    lines = []
    rare = " | ".join(RARE_CLASSES)
    main_lam = config.study.lambdas[0]
    for shift in config.study.shifts:
        rows = [r for r in method_rows(config, records) if r[0] == shift]
        if not rows:
            continue
        control = _select(records, shift, "control", None)
        lines += [
            f"\nShift **{shift}**: target val mIoU (%), mean ± sd over seeds; paired "
            "difference in points, mean [95% t interval] (* the interval excludes 0); rare "
            "classes' IoU (%), mean.\n",
            f"| method | lambda | seeds | mIoU | vs control | vs MinEnt (same lambda, else "
            f"{main_lam:g}) | vs the method it extends | {rare} |",
            "|---|---|---|---|---|---|---|" + "---|" * len(RARE_CLASSES),
        ]
        for _, method, lam in rows:
            sel = _select(records, shift, method, lam)
            miou = 100 * np.array([r["miou"] for r in sel.values()])
            sd = f" ± {miou.std(ddof=1):.2f}" if miou.size > 1 else ""
            minent = _select(records, shift, "minent", lam) if lam is not None else {}
            minent = minent or _select(records, shift, "minent", main_lam)
            vs_control = (
                _fmt_diff(sel, control) if method not in ("control", "source_multi") else ""
            )
            vs_minent = _fmt_diff(sel, minent) if method not in ("minent", "source_multi") else ""
            base = _select(records, shift, EXTENDS[method], lam) if method in EXTENDS else {}
            vs_base = _fmt_diff(sel, base) if base else ""
            ious = [
                np.mean([100 * (r["class_iou"].get(c) or 0.0) for r in sel.values()])
                for c in RARE_CLASSES
            ]
            lines.append(
                f"| {title(method)} | {'' if lam is None else f'{lam:g}'} | {miou.size} | "
                f"{miou.mean():.2f}{sd} | {vs_control} | {vs_minent or '-'} | {vs_base} | "
                + " | ".join(f"{v:.1f}" for v in ious)
                + " |"
            )
    return "\n".join(lines) + "\n"


def seed_markdown(config, records: list[dict]) -> str:
    """Per shift and seed: source-only and control mIoU, each method's gain over the control."""
    lines = []
    for shift in config.study.shifts:
        rows = [r for r in method_rows(config, records) if r[0] == shift]
        methods = [(m, lam) for _, m, lam in rows if m not in ("source_multi", "control")]
        control = _select(records, shift, "control", None)
        source = _select(records, shift, "source_multi", None)
        if not control:
            continue
        names = [f"{title(m)} ({lam:g})" for m, lam in methods]
        lines += [
            f"\nShift **{shift}**, per seed: mIoU (%) and each method's gain over the control "
            "of the same seed (points).\n",
            "| seed | source only | control | " + " | ".join(names) + " |",
            "|---|---|---|" + "---|" * len(names),
        ]
        for seed in sorted(control):
            gains = []
            for method, lam in methods:
                sel = _select(records, shift, method, lam)
                gain = 100 * (sel[seed]["miou"] - control[seed]["miou"]) if seed in sel else None
                gains.append("-" if gain is None else f"{gain:+.2f}")
            src = f"{100 * source[seed]['miou']:.1f}" if seed in source else "-"
            lines.append(
                f"| {seed} | {src} | {100 * control[seed]['miou']:.1f} | "
                + " | ".join(gains)
                + " |"
            )
    return "\n".join(lines) + "\n"


def source_markdown(config, records: list[dict]) -> str:
    """The source models on each shift: accuracy and how confident their errors are."""
    lines = [
        "| shift | source-val mIoU | target mIoU | pixels p > 0.9 | accuracy there | "
        "accuracy elsewhere | errors with p > 0.9 | MinEnt gradient on p > 0.9 | "
        "MaxSquare gradient on p > 0.9 | MinEnt / MaxSquare gradient | "
        "IW / MaxSquare gradient |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shift in config.study.shifts:
        sel = list(_select(records, shift, "source_multi", None).values())
        if not sel:
            continue
        mean = {k: 100 * np.mean([r[k] for r in sel]) for k in SOURCE_KEYS}.__getitem__
        lines.append(
            f"| {shift} | {mean('source_val_miou'):.1f} | {mean('miou'):.1f} | "
            f"{mean('easy_pixels'):.1f}% | {mean('easy_accuracy'):.1f}% | "
            f"{mean('uncertain_accuracy'):.1f}% | {mean('confident_errors'):.1f}% | "
            f"{mean('grad_share_minent'):.1f}% | {mean('grad_share_maxsquare'):.1f}% | "
            f"{mean('grad_ratio_minent_maxsquare') / 100:.2f} | "
            f"{mean('grad_ratio_iw_maxsquare') / 100:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _mean_curve(series: list[list[tuple]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps present in every series and the mean of each column over the series."""
    steps = sorted(set.intersection(*(set(s[0] for s in rows) for rows in series)))
    values = [[next(r[1:] for r in rows if r[0] == k) for k in steps] for rows in series]
    return np.asarray(steps), np.mean(np.asarray(values, np.float64), axis=0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # file output only
    import matplotlib.pyplot as plt

    return plt


def plot_curves(config, records: list[dict], path: str) -> None:
    """Target mIoU over the adaptation steps (top) and its paired gain over the control
    (bottom), mean over seeds, one column per shift."""
    plt = _pyplot()
    shifts = [
        s for s in config.study.shifts if any(r["shift"] == s and "curve" in r for r in records)
    ]
    fig, axes = plt.subplots(2, len(shifts), figsize=(5.5 * len(shifts), 7.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, shift in enumerate(shifts):
        top, bottom = axes[0][col], axes[1][col]
        control = _select(records, shift, "control", None)
        seeds = set()
        rows = [r for r in method_rows(config, records) if r[0] == shift and r[1] != "source_multi"]
        for i, (_, method, lam) in enumerate(rows):
            sel = _select(records, shift, method, lam)
            seeds |= set(sel)
            steps, mean = _mean_curve([r["curve"] for r in sel.values()])
            style = dict(color=colors[i % len(colors)], marker="o", ms=3,
                         ls="--" if method == "control" else "-")  # fmt: skip
            label = title(method) + ("" if lam is None else f" ({lam:g})")
            top.plot(steps, 100 * mean[:, 0], label=label, **style)
            paired = [(r["curve"], control[s]["curve"]) for s, r in sel.items() if s in control]
            if paired:
                gains = [[(k, v - dict(c)[k]) for k, v in m if k in dict(c)] for m, c in paired]
                steps, gain = _mean_curve(gains)
                bottom.plot(steps, 100 * gain[:, 0], label=label, **style)
        top.set(title=f"shift: {shift} (mean over {len(seeds)} seeds)", xlabel="adaptation step",
                ylabel="target val mIoU (%)")  # fmt: skip
        bottom.set(title="the same, minus the control of the same seed", xlabel="adaptation step",
                   ylabel="mIoU points over the control")  # fmt: skip
        bottom.axhline(0.0, color="0.3", lw=0.8)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        bottom.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gradient_shares(config, records: list[dict], path: str) -> None:
    """Share of the target-loss logit gradient on easy pixels, MinEnt vs MaxSquare runs."""
    plt = _pyplot()
    lam = config.study.lambdas[0]
    shifts = [s for s in config.study.shifts if _select(records, s, "maxsquare", lam)]
    fig, axes = plt.subplots(1, len(shifts), figsize=(5.5 * len(shifts), 4.2), squeeze=False)
    for ax, shift in zip(axes[0], shifts, strict=True):
        for method, column, color in (("minent", 2, "tab:red"), ("maxsquare", 3, "tab:blue")):
            sel = _select(records, shift, method, lam)
            if not sel:
                continue
            steps, mean = _mean_curve([r["shares"] for r in sel.values()])
            ax.plot(steps, 100 * mean[:, column - 1], color=color,
                    label=f"{title(method)} run: easy pixels' share of its gradient")  # fmt: skip
            if method == "maxsquare":
                ax.plot(steps, 100 * mean[:, 0], color="0.5", ls="--",
                        label="easy pixels' share of the pixels (MaxSquare run)")  # fmt: skip
        ax.set(title=f"shift: {shift}, lambda {lam:g}", xlabel="adaptation step",
               ylabel="% (easy: p > 0.9)", ylim=(0, 100))  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shares_markdown(config, records: list[dict]) -> str:
    """Easy pixels' share of each loss's gradient, at the first and last logged steps."""
    lam = config.study.lambdas[0]
    lines = [
        "| shift | run | steps | easy pixels | their share of the MinEnt gradient | "
        "their share of the MaxSquare gradient |",
        "|---|---|---|---|---|---|",
    ]
    for shift in config.study.shifts:
        for method in ("control", "minent", "maxsquare"):
            sel = _select(records, shift, method, None if method == "control" else lam)
            if not sel:
                continue
            steps, mean = _mean_curve([r["shares"] for r in sel.values()])
            for i in (0, len(steps) - 1):
                lines.append(
                    f"| {shift} | {title(method)} | {steps[i]} | {100 * mean[i, 0]:.1f}% | "
                    f"{100 * mean[i, 1]:.1f}% | {100 * mean[i, 2]:.1f}% |"
                )
    return "\n".join(lines) + "\n"
