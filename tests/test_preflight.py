"""`python -m msjax.reproduce ROW --preflight`: every stage a few steps at the real sizes.

The slow tests run the preflight of two paper rows on raw downloads faked at their real
sizes with the real file names (GTA5 1914x1052, Cityscapes and NTHU 2048x1024), with the
tiny model (`--preflight-model tiny`: data and shapes only), and check the shapes that
reached the train step and the evaluation, the report's fields, and that nothing a real run
reads was written. A smoke row checks that a real reproduction after a preflight trains
and scores everything as it would without it.
"""

import json
import os
import time

import pytest

from msjax import configlib, reproduce
from msjax.data.preparation import prepare_one
from msjax.reproduction import parse_row, preflight
from tests.helpers import make_full_size_raw


def tree(path) -> dict:
    """Every file and link under `path`: relative path -> (size, mtime), links by target."""
    out = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isfile(full):
                st = os.stat(full)
                out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_preflight(capsys, row, workdir, *args):
    """Runs the command in this process; returns (preflight.json, what it printed)."""
    argv = [row, f"--workdir={workdir}", "--preflight", "--preflight-model=tiny",
            "--preflight-steps=2", "--no-progress", *map(str, args)]  # fmt: skip
    status, printed = reproduce.main(argv), capsys.readouterr()
    assert status == 0, printed.err[-3000:]
    slug = parse_row(row).slug
    return read_json(workdir / "preflight" / slug / "preflight.json"), printed.out


def check_projection(stage: dict) -> None:
    """The projection is steps x step time + validations x images x time per image (of the
    timed step: two steps, the first after compilation not timed)."""
    v = stage["validation"]
    train = stage["steps"] * stage["step_s"]
    val = v["count"] * v["split_images"] * v["s_per_image"]
    assert stage["projected_s"]["total"] == pytest.approx(train + val, rel=1e-9)
    assert len(stage["step_times"]) == 2 and stage["step_s"] == stage["step_times"][1] > 0
    assert stage["compile_s"] > 0
    assert stage["peak_memory_bytes"] > 2**20 and stage["memory_kind"].startswith("process")
    assert v["images"] == 2 and not v["includes_compile"]


@pytest.fixture(scope="module")
def full_size_raw(tmp_path_factory):
    """GTA5, Cityscapes and NTHU Rome at their real sizes, two pairs per split."""
    return make_full_size_raw(tmp_path_factory.mktemp("raw"), ("gta5", "cityscapes", "nthu"))


@pytest.mark.slow
def test_gta2city_iw_multi_preflight_at_real_sizes(tmp_path, capsys, full_size_raw):
    data_dir, workdir = tmp_path / "data", tmp_path / "paper"
    # Cityscapes 1024x512 is prepared already: the preflight reads it there.
    prepare_one("cityscapes", "1024x512", data_dir, raw_dir=full_size_raw["cityscapes"],
                max_examples=2, skip_bad=True)  # fmt: skip
    before = tree(data_dir)
    record, out = run_preflight(
        capsys, "gta2city:iw_multi", workdir, f"--gta5={full_size_raw['gta5']}",
        f"--cityscapes={full_size_raw['cityscapes']}", f"--data-dir={data_dir}",
    )  # fmt: skip
    source, adapt = record["stages"]
    assert (source["stage"], adapt["stage"]) == ("source_multi", "iw_multi")
    assert source["shapes"] == {"source": [1, 720, 1280, 3], "source_label": [1, 720, 1280],
                                "target": None}  # fmt: skip
    assert adapt["shapes"]["target"] == [1, 640, 1280, 3]  # IW + Multi's 1280x640 target
    assert source["validation"]["split"] == "gta5/1280x720/val"
    assert source["validation"]["image_hw"] == [720, 1280]
    assert adapt["validation"]["image_hw"] == [640, 1280]
    # Validations of the full stages: 80,000 / 5,000 and 10 epochs of 2,975 steps, over the
    # original's val lists (not prepared in the data folder).
    assert (source["steps"], source["validation"]["count"]) == (80_000, 16)
    assert (adapt["steps"], adapt["validation"]["count"]) == (29_750, 10)
    assert source["validation"]["split_images"] == 6382
    assert adapt["validation"]["split_images"] == 500
    for stage in record["stages"]:
        check_projection(stage)

    evals = {(e["protocol"], e["flip"]): e for e in record["evaluations"]}
    assert set(evals) == {(p, f) for p in ("original", "full") for f in (False, True)}
    for (name, _), e in evals.items():
        assert e["image_hw"] == [512, 1024] and e["images"] == 2
        assert e["label_hw"] == ([512, 1024] if name == "original" else [1024, 2048])
        # The report scores full only once Cityscapes full is prepared in the data folder.
        assert e["in_report"] == (name == "original")
        assert e["split_images"] == 2 and e["split_images_from"] == "prepared"
    data = {(f["dataset"], f["size"]): f for f in record["data"]}
    assert data[("cityscapes", "1024x512")]["source"].startswith("prepared in")
    assert data[("gta5", "1280x720")]["raw_sizes"] == {"1914x1052": 4}
    assert data[("cityscapes", "full")]["raw_sizes"] == {"2048x1024": 4}
    assert any("listed but not on disk" in n for n in record["notes"])
    assert "| source_multi | 1x720x1280x3 | - |" in out
    assert "| full | yes | 1024x512 | 2048x1024 |" in out

    # Nothing a real run reads: no chain folder, no report, the data folder untouched
    # (beside preflight/, only the mark that the folder is msjax.reproduce's).
    assert sorted(os.listdir(workdir)) == [".msjax-owner.json", "preflight"]
    assert tree(data_dir) == before


@pytest.mark.slow
def test_city2nthu_rome_iw_preflight_prepares_subsets_outside_the_data_folder(
    tmp_path, capsys, full_size_raw
):
    workdir = tmp_path / "paper"
    record, _ = run_preflight(
        capsys, "city2nthu:rome,iw", workdir, f"--cityscapes={full_size_raw['cityscapes']}",
        f"--nthu={full_size_raw['nthu']}",
    )  # fmt: skip
    source, adapt = record["stages"]
    assert (source["stage"], adapt["stage"]) == ("source", "nthu-rome_iw")
    assert source["shapes"]["source"] == [1, 512, 1024, 3]
    assert adapt["shapes"]["target"] == [1, 512, 1024, 3]
    assert adapt["validation"]["split"] == "nthu-rome/1024x512/test"
    assert adapt["validation"]["split_images"] == 100  # the original's Rome test list
    for stage in record["stages"]:
        check_projection(stage)
    evals = {(e["protocol"], e["flip"]): e for e in record["evaluations"]}
    assert evals[("original", False)]["label_hw"] == [512, 1024]
    assert evals[("full", True)]["label_hw"] == [1024, 2048]
    assert record["model"]["blocks"] == list(configlib.TINY_MODEL["blocks"])
    # The default data folder (WORKDIR/data) was neither created nor written.
    assert sorted(os.listdir(workdir)) == [".msjax-owner.json", "preflight"]
    subset = workdir / "preflight" / "city2nthu_rome_iw" / "data" / "nthu_rome"
    assert sorted(os.listdir(subset)) == ["1024x512", "full"]


@pytest.mark.slow
def test_a_reproduction_after_a_preflight_runs_as_without_one(tmp_path, capsys, smoke_data_dir):
    from msjax.reproduction import make_plan
    from msjax.reproduction import reproduce as reproduce_plan

    workdir, row = tmp_path / "paper", "city2nthu:rome,smoke"
    before = tree(smoke_data_dir)
    record, _ = run_preflight(capsys, row, workdir, f"--data-dir={smoke_data_dir}")
    assert [s["stage"] for s in record["stages"]] == ["source", "nthu-rome_maxsquare"]
    assert all(f["source"].startswith("prepared in") for f in record["data"])
    assert tree(smoke_data_dir) == before
    plan = make_plan(parse_row(row), workdir, smoke_data_dir)
    assert not os.path.exists(plan.chain_dir) and not os.path.exists(plan.report_dir)
    # The real run trains every stage from its first step and evaluates every checkpoint.
    started = time.time()
    report = reproduce_plan(plan, {}, progress=False)
    out = capsys.readouterr().out
    assert "finished earlier" not in out and "Resuming" not in out
    for stage in plan.stages:
        summary = read_json(os.path.join(plan.chain_dir, stage.name, "results.json"))
        assert (summary["start_step"], summary["final_step"]) == (0, 2)
    assert len(report["evaluations"]) == 4 and {e["step"] for e in report["evaluations"]} == {2}
    assert all(os.path.getmtime(e["results"]) >= started for e in report["evaluations"])


def test_preflight_options_are_checked():
    assert preflight.make_options() == preflight.Options(3, 2, "real")
    assert preflight.make_options(5, 4, "tiny") == preflight.Options(5, 4, "tiny")
    with pytest.raises(Exception, match=r"--preflight-steps 1: must be an integer >= 2"):
        preflight.make_options(steps=1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preflight", "--preflight-steps=1"], "--preflight-steps 1: must be an integer >= 2"),
        (["--preflight", "--preflight-images=0"], "--preflight-images 0: must be an integer >= 2"),
        (["--preflight", "--preflight-model=big"], "--preflight-model 'big': valid: real, tiny"),
        (["--preflight-steps=3"], "--preflight-steps: only with --preflight"),
        (["--preflight", "--gta5=RAW"], "runs on generated synthetic data"),
    ],
)
def test_bad_preflight_arguments_are_one_message_before_any_work(tmp_path, capsys, args, message):
    workdir = tmp_path / "paper"
    assert reproduce.main(["gta2city:iw,smoke", f"--workdir={workdir}", *args]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err
    assert not workdir.exists()


def test_preflight_needs_no_init_but_the_raw_folders_of_what_is_not_prepared(tmp_path, capsys):
    workdir = tmp_path / "paper"
    assert reproduce.main(["gta2city:iw_multi", f"--workdir={workdir}", "--preflight"]) == 2
    err = capsys.readouterr().err
    assert "--init" not in err  # a real reproduction would stop on it first
    assert "cityscapes 1024x512 is not prepared in" in err and "pass --cityscapes RAW_DIR" in err
    assert not workdir.exists()


def test_clearing_an_earlier_preflight_unlinks_links_into_the_data_folder(tmp_path):
    prepared = tmp_path / "data" / "gta5" / "1280x720"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    scratch = tmp_path / "preflight" / "row"
    (scratch / "data" / "gta5").mkdir(parents=True)
    os.symlink(prepared, scratch / "data" / "gta5" / "1280x720")
    preflight.clear(str(scratch))
    assert not scratch.exists() and (prepared / "dataset_info.json").read_text() == "{}"
