"""Cases that did something without a word, each now decided (docs/errors.md says how).

- checkpoints/ deleted by hand: the run retrained from step 0 and replaced best/ and
  final/. Now refused while best/ or final/ is there.
- a checkpoint folder renamed (checkpoints/2 -> checkpoints/3): resumed as step 3 with the
  state of step 2. Now refused, naming both steps.
- evaluate on synthetic data without --input-size named '1024x512', a size the user never
  typed (it now takes the set's own size); its hint for an unprepared size was a command
  prepare refuses.
- --split-list tarin=... prepared a split called 'tarin'.
- reproduce --source-weights x.pth said "no such folder" for a file that exists; --init
  with --source-weights was ignored.
- --workdir "" of the study ran in the current folder.
"""

import json
import os
import shutil

import pytest
from PIL import Image

from msjax import demo, evaluate, predict, prepare, reproduce, study, train
from msjax.data.preparation import prepare_one
from msjax.training.workdir import prepare_workdir
from tests.helpers import (
    CATALOGUE,
    evaluate_args,
    fails,
    make_gta5,
    predict_args,
    refused,
    run_main,
    save_random_checkpoint,
    smoke,
    start,
    tree,
)


@pytest.fixture(scope="module")
def finished(smoke_data_dir, tmp_path_factory):
    """A finished 2-step smoke run (a checkpoint at step 2, best/, final/)."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert train.run(smoke(smoke_data_dir), str(workdir)) == 0
    return workdir


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_run_whose_checkpoints_were_deleted_keeps_its_weights(
    finished, smoke_data_dir, tmp_path, capsys
):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = tree(run)
    message = fails(capsys, smoke(smoke_data_dir), run, "checkpoints/ deleted by hand")
    assert "best/ (step 2) and final/ (step 2)" in message
    assert f"--config.init.checkpoint={run / 'final'}" in message
    assert tree(run) == before


def test_a_renamed_checkpoint_does_not_resume_as_another_step(
    finished, smoke_data_dir, tmp_path, capsys
):
    run = copy_of(finished, tmp_path)
    os.rename(run / "checkpoints" / "2", run / "checkpoints" / "3")
    before = tree(run)
    message = fails(capsys, smoke(smoke_data_dir, steps=4), run, "renamed checkpoint step")
    assert "holds the train state of step 2, not 3" in message
    assert f"rename it back to {run / 'checkpoints' / '2'}" in message
    after = tree(run)  # as before, beside the new config recorded for the longer run
    assert {k: after[k] for k in before} == before
    assert all(k.startswith("config.") for k in set(after) - set(before))


@pytest.fixture
def synthetic_data(tmp_path):
    data = tmp_path / "data"
    prepare_one("synthetic-target", "128x64", str(data), max_examples=2)
    return data


def test_evaluate_synthetic_at_its_own_size_and_the_hint_for_another_works(
    synthetic_data, tmp_path, capsys
):
    """Without --input-size the synthetic sets were evaluated at '1024x512', a size they do
    not have; the hint for a size not prepared named RAW_DIR, which prepare refuses."""
    weights_dir = tmp_path / "w"
    save_random_checkpoint(weights_dir, num_classes=19)
    args = [str(a) for a in evaluate_args(weights_dir, synthetic_data, tmp_path / "out")]
    without_size = [a for a in args if a not in ("--input-size", "128x64")]
    # The set's default size (192x96) is not prepared here: the hint says how.
    err = refused(capsys, evaluate.main, without_size, "empty data dir")
    assert CATALOGUE["hint for an unprepared synthetic size"] in err and "192x96" in err
    hint = err.split("Run: python -m msjax.prepare ")[1].split()
    assert prepare.main([*hint, "--max-examples", "2", "--no-progress"]) == 0
    assert evaluate.main(without_size) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["input_size"] == "192x96"  # the set's own default size


def test_a_misspelt_split_name_is_refused(tmp_path, capsys):
    make_gta5(tmp_path / "raw", n=2, orphans=False)
    (tmp_path / "list.txt").write_text("00001\n")
    args = ["gta5", tmp_path / "raw", "--data-dir", tmp_path / "data",
            "--split-list", f"tarin={tmp_path / 'list.txt'}"]  # fmt: skip
    refused(capsys, prepare.main, args, "misspelt split name")
    assert not (tmp_path / "data").exists()


def test_reproduce_names_a_pth_and_refuses_init_with_source_weights(tmp_path, capsys):
    (tmp_path / "source.pth").write_bytes(b"a PyTorch file")
    args = ["gta2city:iw", "--workdir", tmp_path / "w", "--source-weights", tmp_path / "source.pth"]
    err = refused(capsys, reproduce.main, args, "reproduce --source-weights of a .pth")
    assert "python -m msjax.convert" in err and "--num-classes 19" in err
    save_random_checkpoint(tmp_path / "src", num_classes=19)
    save_random_checkpoint(tmp_path / "init", num_classes=19)
    args = ["gta2city:iw", "--workdir", tmp_path / "w", "--source-weights", tmp_path / "src",
            "--init", tmp_path / "init"]  # fmt: skip
    refused(capsys, reproduce.main, args, "reproduce --init with --source-weights")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["demo", "study", "reproduce"])
def test_an_empty_workdir_is_refused(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an empty workdir would have gone
    main, argv = {
        "demo": (demo.main, ["msjax/demo.py", "--config", "demo.py:smoke", "--workdir="]),
        "study": (study.main, ["msjax/study.py", "--workdir=", "--report_only"]),
        "reproduce": (reproduce.main, ["gta2city:iw,smoke", "--workdir="]),
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " + CATALOGUE["empty --workdir of demo, study or reproduce"] in err
    assert "Traceback" not in err and os.listdir(tmp_path) == []


def test_train_without_a_config_and_a_workdir_that_is_a_file(smoke_data_dir, tmp_path, capsys):
    status, err = run_main(train.main, capsys, f"--workdir={tmp_path / 'run'}")
    assert status == 2 and "Traceback" not in err  # was a TypeError traceback
    assert "error: " + CATALOGUE["train without --config"] in err
    (tmp_path / "a_file").write_text("not a folder")
    fails(capsys, smoke(smoke_data_dir), tmp_path / "a_file", "workdir that is a file")
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_too_many_pairs_per_device_is_refused_before_any_work(smoke_data_dir, tmp_path, capsys):
    c = smoke(smoke_data_dir)
    c.batch_pairs = 1000
    fails(capsys, c, tmp_path / "run", "batch of too many pairs per device")
    assert not (tmp_path / "run").exists()


def test_evaluate_of_a_split_that_is_not_prepared(smoke_data_dir, tmp_path, capsys):
    """A ValueError traceback from TensorFlow Datasets."""
    weights_dir = tmp_path / "w"
    save_random_checkpoint(weights_dir, num_classes=19)
    args = evaluate_args(weights_dir, smoke_data_dir, tmp_path / "out", "--split", "test")
    refused(capsys, evaluate.main, args, "evaluate a split that is not prepared")
    assert not (tmp_path / "out").exists()


def test_predict_into_the_images_folder_says_so(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 24)).save(tmp_path / "img" / "a.png")
    save_random_checkpoint(tmp_path / "w", num_classes=19)
    args = predict_args(tmp_path / "w", tmp_path / "img", tmp_path / "img")
    refused(capsys, predict.main, args, "predict --out that is the images folder")
    assert os.listdir(tmp_path / "img") == ["a.png"]


def test_a_study_report_of_nothing_is_an_error(tmp_path, capsys):
    """--report_only on a workdir without a finished run wrote an empty report, exit 0."""
    status, err = run_main(study.main, capsys, f"--workdir={tmp_path / 'st'}", "--report_only")
    assert status == 2 and "Traceback" not in err
    assert CATALOGUE["study report of no finished run"] in err
    assert not (tmp_path / "st").exists()


@pytest.mark.slow
def test_a_refused_command_prints_only_its_error_line(smoke_data_dir, tmp_path):
    """The demo, the study and evaluate printed TensorFlow's C++ banners (oneDNN, absl's
    InitializeLog) on stderr before their message."""
    run = tmp_path / "run"
    prepare_workdir(str(run), smoke(smoke_data_dir))  # a training run's workdir
    save_random_checkpoint(tmp_path / "w", num_classes=19)
    commands = {
        "msjax.demo": ["--config", "demo.py:smoke", f"--workdir={run}"],
        "msjax.study": [f"--workdir={tmp_path / 'st'}", "--report_only"],
        "msjax.evaluate": evaluate_args(
            tmp_path / "w", smoke_data_dir, tmp_path / "o", "--split", "test"
        ),  # fmt: skip
    }
    for module, args in commands.items():
        result = start(module, *map(str, args))
        _, err = result.communicate(timeout=300)
        assert result.returncode == 2, err[-2000:]
        assert err.strip().splitlines() == [err.strip()] and err.startswith("error: "), err
