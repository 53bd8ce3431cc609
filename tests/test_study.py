"""The study (configs/study.py, msjax.study) on its smoke setting: runs, resumes, reports."""

import json
import os

import numpy as np
import pytest

from msjax.data.preparation import prepare_one
from msjax.errors import ConfigError, UserError
from msjax.evaluation import study_report
from msjax.training import study
from tests.helpers import load_config


def test_paired_interval_is_the_student_t_interval():
    mean, low, high = study_report.paired_interval([1.0, 2.0, 3.0])
    # sd 1, n 3: half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732.
    assert mean == 2.0 and high - mean == pytest.approx(4.303 / np.sqrt(3), rel=1e-6)
    assert mean - low == pytest.approx(high - mean)
    assert study_report.paired_interval([0.5]) is None
    assert study_report.t_quantile(4) == 2.776 and study_report.t_quantile(200) == 1.96


def test_table_pairs_methods_by_seed():
    c = load_config("study")
    c.study.shifts, c.study.methods, c.study.extra = (
        ("synthetic-fog-2",),
        ("control", "minent", "maxsquare"),
        (),
    )
    iou = {name: 0.5 for name in study_report.RARE_CLASSES}

    def record(seed, method, miou):
        lam = None if method == "control" else 1.0
        return dict(
            seed=seed, shift="synthetic-fog-2", method=method, lam=lam, miou=miou, class_iou=iou
        )

    # MaxSquare beats the control by 1, 2, 3 points in seeds 1-3; MinEnt by 1 point in each.
    records = [record(s, "control", 0.5 + s / 100) for s in (1, 2, 3)]
    records += [record(s, "minent", 0.51 + s / 100) for s in (1, 2, 3)]
    records += [record(s, "maxsquare", 0.5 + 2 * s / 100) for s in (1, 2, 3)]
    table = study_report.markdown(c, records)
    half = 100 * 0.01 * 4.303 / np.sqrt(3)
    row = next(line for line in table.splitlines() if line.startswith("| MaxSquare |"))
    assert f"| +2.00 [{2 - half:+.2f}, {2 + half:+.2f}] |" in row  # vs control
    assert f"| +1.00 [{1 - half:+.2f}, {1 + half:+.2f}] |" in row  # vs MinEnt
    minent = next(line for line in table.splitlines() if line.startswith("| MinEnt |"))
    assert "| +1.00 [+1.00, +1.00] * |" in minent
    per_seed = study_report.seed_markdown(c, records)
    assert "| 2 | - | 52.0 | +1.00 | +2.00 |" in per_seed


def test_study_names_its_runs_and_checks_its_fields():
    c = load_config("study")
    c.study.seeds, c.study.shifts = (1, 2), ("synthetic-target", "synthetic-fog-2")
    c.study.lambdas, c.study.extra = (1.0,), (("maxsquare", 3.2),)
    runs = study.study_runs(c, "/w")
    seeds, shifts, methods = c.study.seeds, c.study.shifts, c.study.methods
    assert len(runs) == len(seeds) * (1 + len(shifts) * (len(methods) + 1))
    by_name = {r.stage.name: r for r in runs}
    multi = by_name["seed1/synthetic-fog-2/iw_multi_lam1"].stage.config
    assert multi.method == "iw_multi" and multi.loss.lambda_target == pytest.approx(0.9)
    maxsquare = by_name["seed2/synthetic-target/maxsquare_lam3.2"].stage.config
    assert maxsquare.loss.lambda_target == 3.2
    assert multi.init.checkpoint == "/w/seed1/source/final"
    assert (multi.target.dataset, multi.target.size) == ("synthetic-fog-2", "192x96")
    control = by_name["seed1/synthetic-target/control"].stage.config
    assert control.loss.lambda_target == 0.0 and control.target.dataset == "synthetic-target"
    source = by_name["seed1/source"].stage.config
    assert source.method == "source_multi"
    assert source.eval.dataset == "synthetic-source"
    c.study.shifts = ("synthetic-target", "synthetic-rain-1")
    with pytest.raises(ConfigError, match="'synthetic-rain-1' is not a generated target"):
        study.study_runs(c, "/w")
    c.study.shifts, c.study.extra = ("synthetic-target",), (("control", 1.0),)
    with pytest.raises(ConfigError, match="config.study.extra"):
        study.study_runs(c, "/w")
    c.study.extra, c.study.adapt_steps = (), 0
    with pytest.raises(ConfigError, match=r"config.study.adapt_steps=0: must be an integer >= 1"):
        study.study_runs(c, "/w")
    c.study.adapt_steps, c.study.adapt_lr = 300, float("nan")
    with pytest.raises(ConfigError, match="config.study.adapt_lr=nan"):
        study.study_runs(c, "/w")


@pytest.mark.slow
def test_study_smoke_runs_resumes_and_reports(tmp_path):
    from msjax.study import report

    c = load_config("study", "smoke")
    data_dir = str(tmp_path / "data")
    for dataset, config in (
        ("synthetic-source", "128x64"),
        ("synthetic-target", "128x64"),
        ("synthetic-fog-2", "128x64"),
    ):
        prepare_one(dataset, config, data_dir, max_examples=16)
    c.data_dir = data_dir
    workdir = str(tmp_path / "study")
    done = study.run_study(c, workdir)
    runs = study.study_runs(c, workdir)
    assert done["finished"] == len(runs) == 6
    timing = [json.loads(line) for line in open(os.path.join(workdir, "timing.jsonl"))]
    assert [t["run"] for t in timing] == [r.stage.name for r in runs]

    # Resuming a finished study trains nothing and times nothing.
    again = study.run_study(c, workdir)
    assert again["ran_s"] == 0.0
    assert len(open(os.path.join(workdir, "timing.jsonl")).readlines()) == 6

    # The source model trains the aux head too (CE(main) + lambda_seg CE(aux), no target).
    source_log = [
        json.loads(line) for line in open(os.path.join(workdir, "seed1/source/metrics.jsonl"))
    ]
    assert all("loss_source_aux" in r and "loss_target" not in r for r in source_log if "loss" in r)

    records = study_report.collect(c, workdir)
    source = [r for r in records if r["method"] == "source_multi"]
    assert len(source) == 2 and all(0.0 <= r["easy_pixels"] <= 1.0 for r in source)
    adapted = [r for r in records if r["method"] == "maxsquare"]
    assert len(adapted) == 2
    for r in adapted:
        assert [step for step, _ in r["curve"]] == [0, 1, 2]
        assert set(r["class_iou"]) >= set(study_report.RARE_CLASSES)
        assert all(0.0 <= v <= 1.0 for row in r["shares"] for v in row[1:])

    docs = tmp_path / "docs"
    text = report(c, workdir, str(docs))
    assert "| MaxSquare | 1 | 2 |" in text and "| synthetic-fog-2 |" in text
    assert (docs / "smoke_curves.png").stat().st_size > 0
    assert (docs / "smoke_gradient_share.png").stat().st_size > 0
    assert open(os.path.join(workdir, "report.md")).read() == text


def test_evaluate_names_the_corrupted_domains():
    from msjax.evaluation import protocol

    setting = protocol.resolve("synthetic-fog-2", "original", None, "192x96")
    assert (setting.dataset.builder, setting.image_size, setting.split) == (
        "synthetic_fog_2",
        "192x96",
        "val",
    )
    assert protocol.resolve("synthetic-target", "original", None, None).image_size == "192x96"
    with pytest.raises(UserError, match="synthetic-noise-3"):
        protocol.resolve("synthetic-fog-9", "original", None, "192x96")
