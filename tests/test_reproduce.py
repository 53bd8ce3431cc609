"""The paper's protocol: source_multi, source validation, and `python -m msjax.reproduce`.

The reproduction command runs on the generated synthetic data (`,smoke` rows): every stage
of `gta2city:iw_multi,smoke` (killed with SIGKILL between its stages, then run again) and of
`city2nthu:rome,smoke`, down to the report.
"""

import json
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import configlib, reproduce
from msjax.errors import WorkdirError
from msjax.methods import METHODS
from msjax.training import run as run_lib
from msjax.training.stages import Stage, run_stage
from msjax.training.step import create_train_state, make_train_step
from tests.helpers import REPO


def one_step(variant: str):
    """(params before, params after, metrics) of one step of a smoke source config."""
    c = configlib.load("gta2city", f"{variant},smoke")
    model, variables, _ = run_lib.build_model(c, "cpu")
    tx = run_lib.build_optimizer(c, model, METHODS[c.method], variables["params"]).tx
    state = create_train_state(variables, tx)
    rng = np.random.default_rng(0)
    source = {
        "image": jnp.asarray(rng.normal(size=(1, 64, 128, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 19, (1, 64, 128)), jnp.int32),
    }
    step = jax.jit(make_train_step(model, tx, METHODS[c.method], c.loss))
    after, metrics = step(state, source, None)
    return variables["params"], after.params, jax.device_get(metrics)


def layer5_change(before, after) -> float:
    return max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(before["layer5"]), jax.tree.leaves(after["layer5"]), strict=True
        )
    )


@pytest.mark.slow
def test_source_multi_trains_the_aux_head_and_logs_its_loss():
    before, after, metrics = one_step("source_multi")
    assert np.isfinite(metrics["loss_source_aux"]) and metrics["loss_source_aux"] > 0
    total = metrics["loss_source"] + 0.1 * metrics["loss_source_aux"]
    assert metrics["loss"] == pytest.approx(total, rel=1e-5)
    assert layer5_change(before, after) > 0
    # The plain source run gives the aux head no loss: the optimiser leaves it untouched.
    before, after, metrics = one_step("source")
    assert "loss_source_aux" not in metrics
    assert layer5_change(before, after) == 0.0


@pytest.mark.parametrize(
    "name, arg, val, every",
    [
        ("gta2city", "source", "gta5/1280x720/val", 5000),
        ("gta2city", "source_multi", "gta5/1280x720/val", 5000),
        ("synthia2city", "source", "synthia/1280x760/val", 5000),
        ("synthia2city", "source_multi", "synthia/1280x760/val", 5000),
        ("city2nthu", "source", "cityscapes/1024x512/val", 2975),
        ("city2nthu", "tokyo,source", "cityscapes/1024x512/val", 2975),
    ],
)
def test_source_runs_validate_on_the_source_val_split(name, arg, val, every):
    c = configlib.load(name, arg)
    assert f"{c.eval.dataset}/{c.eval.size}/{c.eval.split}" == val
    assert c.eval.dataset == c.source.dataset and c.eval.every_steps == every
    method = METHODS[c.method]
    assert not method.adapting and method.multi_level == ("multi" in arg)
    assert (c.train.steps, c.optim.iter_max) == (80_000, 200_000)
    smoke = configlib.load(name, f"{arg},smoke")
    assert (smoke.eval.dataset, smoke.eval.split) == ("synthetic-source", "val")


def test_cross_city_source_is_80k_of_a_200k_poly_at_1024x512_for_every_city():
    c = configlib.load("city2nthu", "source")
    assert (c.train.steps, c.optim.iter_max) == (80_000, 200_000)
    assert (c.source.dataset, c.source.size) == ("cityscapes", "1024x512")
    assert c.model.num_classes == 13
    assert all(configlib.load("city2nthu", f"{city},source") == c for city in ("rome", "taipei"))


def test_selection_metric_and_thresholds_follow_the_original():
    for arg in ("source", "maxsquare", "iw_multi"):
        assert configlib.load("synthia2city", arg).eval.select == "miou13"
        assert configlib.load("gta2city", arg).eval.select == "miou"
    multi = configlib.load("gta2city", "iw_multi")
    assert multi.target.size == multi.eval.size == "1280x640"
    rome = configlib.load("city2nthu", "rome")
    assert rome.loss.threshold == rome.loss.multi_threshold == 0.98


def run_reproduce(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "msjax.reproduce", *args, "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_gta2city_iw_multi_smoke_runs_every_stage_and_resumes_after_a_kill(
    tmp_path, smoke_data_dir, capsys
):
    workdir = tmp_path / "paper"
    args = ["gta2city:iw_multi,smoke", f"--workdir={workdir}", f"--data-dir={smoke_data_dir}"]
    chain = workdir / "gta2city_smoke"
    process = run_reproduce(*args)
    deadline = time.time() + 300
    while not (chain / "source_multi" / "results.json").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "the source stage did not finish in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    report_dir = workdir / "reports" / "gta2city_iw_multi_smoke"
    assert not (report_dir / "report.json").exists()

    assert reproduce.main(args + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "source_multi: Source only + aux CE, synthetic-source/128x64/train" in out
    assert "finished earlier" in out.split("== iw_multi")[0]
    assert "finished earlier" not in out.split("== iw_multi")[1]

    source = read_json(chain / "source_multi" / "results.json")
    assert source["eval"] == "synthetic-source/128x64/val"  # the source's own val split
    logged = [json.loads(line) for line in open(chain / "source_multi" / "metrics.jsonl")]
    assert all(np.isfinite(r["loss_source_aux"]) for r in logged if "loss" in r)
    adapt = read_json(chain / "iw_multi" / "config.json")
    assert adapt["init"]["checkpoint"] == str(chain / "source_multi" / "best")
    assert read_json(chain / "iw_multi" / "results.json")["final_step"] == 2

    report = read_json(report_dir / "report.json")
    assert report["published"]["miou"] == 46.4 and report["row"] == "gta2city:iw_multi,smoke"
    assert [c["name"] for c in report["checkpoints"]] == ["best", "final"]
    assert report["checkpoints"][0]["target_labels"]
    seen = {(e["checkpoint"], e["protocol"], e["flip"]) for e in report["evaluations"]}
    assert seen == {(c, "original", f) for c in ("best", "final") for f in (False, True)}
    assert all(0.0 <= e["miou"] <= 1.0 and e["num_images"] == 24 for e in report["evaluations"])
    text = (report_dir / "report.md").read_text()
    assert "does not state whether the published numbers" in text and "| 46.4 |" in text
    assert text.count("| best | 2 | 128x64 | original |") == 2  # with and without flip


@pytest.mark.slow
def test_city2nthu_rome_smoke_trains_the_shared_source_then_adapts(tmp_path, smoke_data_dir):
    from msjax.reproduction import make_plan, make_workdir, parse_row
    from msjax.reproduction import reproduce as reproduce_plan

    row = parse_row("city2nthu:rome,smoke")
    plan = make_plan(row, tmp_path / "paper", smoke_data_dir)
    make_workdir(plan)
    assert [s.name for s in plan.stages] == ["source", "nthu-rome_maxsquare"]
    record = reproduce_plan(plan, {}, progress=False)
    chain = {s["stage"]: s for s in record["chain"]}
    assert chain["source"]["eval"] == "synthetic-source/128x64/val"
    assert chain["nthu-rome_maxsquare"]["eval"] == "synthetic-target/128x64/val"
    assert record["published"]["miou"] == 53.9 and len(record["evaluations"]) == 4
    assert {e["step"] for e in record["evaluations"]} == {2}
    # A finished stage is reused only with the config it ran with.
    stage = plan.stages[0]
    changed = stage.config.copy_and_resolve_references()
    changed.loss.lambda_seg = 0.5
    with pytest.raises(WorkdirError, match="holds the finished stage 'source' of another config"):
        run_stage(Stage(stage.name, stage.title, changed), plan.chain_dir)


@pytest.mark.parametrize(
    "args, message",
    [
        (["gta2city:iw_mult"], "gta2city: unknown config argument 'iw_mult'; valid: a method"),
        (["city2nthu:iw"], "valid: one of rome, rio, tokyo, taipei, a method"),
        (["nowhere:iw"], "expected SETTING:ARG with SETTING one of city2nthu, gta2city"),
        (["gta2city:iw"], "--init is required to train the source model"),
        (["gta2city:source", "--source-weights=W"], "is the source-only row"),
        (["gta2city:iw,smoke", "--gta5=RAW"], "runs on generated synthetic data"),
    ],
)
def test_bad_arguments_are_one_message_before_any_work(tmp_path, capsys, args, message):
    workdir = tmp_path / "paper"
    assert reproduce.main([*args, f"--workdir={workdir}"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err
    assert not workdir.exists()


def test_missing_raw_folder_names_the_flag(tmp_path, capsys):
    from msjax.reproduction import make_plan, parse_row
    from msjax.reproduction.data import missing

    init = tmp_path / "init"
    init.mkdir()
    metadata = {"format": "msjax-weights/1", "num_classes": 19}
    (init / "metadata.json").write_text(json.dumps(metadata))
    plan = make_plan(parse_row("gta2city:iw_multi"), tmp_path / "paper", init=init)
    assert missing(plan) == [
        ("cityscapes", "1024x512"),
        ("cityscapes", "1280x640"),
        ("gta5", "1280x720"),
    ]
    args = ["gta2city:iw_multi", f"--workdir={tmp_path / 'paper'}", f"--init={init}"]
    assert reproduce.main(args) == 2
    err = capsys.readouterr().err
    assert "cityscapes 1024x512 is not prepared in" in err and "pass --cityscapes RAW_DIR" in err
    assert not (tmp_path / "paper").exists()


def test_iw_multi_is_scored_at_its_training_size_too():
    from msjax import reproduction
    from msjax.reproduction import data

    def sizes(row):
        return data.eval_sizes(reproduction.make_plan(reproduction.parse_row(row), "/w"))

    assert sizes("gta2city:iw_multi") == ["1024x512", "1280x640"]
    assert sizes("synthia2city:iw_multi") == ["1024x512", "1280x640"]
    assert sizes("gta2city:iw") == sizes("city2nthu:rome,iw") == ["1024x512"]
    assert sizes("gta2city:iw_multi,smoke") == ["128x64"]
