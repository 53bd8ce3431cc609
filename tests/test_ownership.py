"""Nothing overwritten that the command did not write (msjax.ownership).

Every command writes only into a new folder or one it wrote itself, for the same
experiment; default report folders are unique per checkpoint. Each case runs the command
in this process through its `main(argv)` and checks that the folder it refused is byte for
byte as it was.
"""

import json
import os

import pytest
from PIL import Image

from msjax import demo, evaluate, outputs, ownership, predict, train
from msjax.training.workdir import prepare_workdir
from tests.helpers import (
    evaluate_args,
    fails,
    predict_args,
    refused,
    save_random_checkpoint,
    smoke,
    tree,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """runs/a/final and runs/b/final: two checkpoints with the same folder name."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        save_random_checkpoint(root / "runs" / name / "final", num_classes=19, seed=seed)
    return root / "runs"


@pytest.fixture
def finished_run(smoke_data_dir, tmp_path):
    """A training run's workdir as a finished run leaves it (config.json, results.json)."""
    workdir = tmp_path / "run"
    prepare_workdir(str(workdir), smoke(smoke_data_dir))
    outputs.write_text(workdir / "results.json", json.dumps({"final_step": 2}))
    return workdir


def test_demo_refuses_a_training_runs_workdir(finished_run, capsys):
    """The demo replaced the run's results.json and added its stage folders."""
    before = tree(finished_run)
    argv = ["msjax/demo.py", "--config", "demo.py:smoke", f"--workdir={finished_run}"]
    assert demo.main(argv) == 2
    err = capsys.readouterr().err
    assert "is the workdir of a training run (python -m msjax.train); python -m msjax.demo" in err
    assert tree(finished_run) == before


@pytest.mark.parametrize("owner", ["msjax.demo", "msjax.evaluate", "legacy demo"])
def test_train_refuses_a_folder_another_command_wrote(smoke_data_dir, tmp_path, capsys, owner):
    folder = tmp_path / "other"
    folder.mkdir()
    if owner == "legacy demo":  # a demo's workdir from before the marks
        (folder / "results.json").write_text(json.dumps({"target_miou": {"source": 0.1}}))
    else:
        ownership.mark(folder, owner)
    before = tree(folder)
    assert train.run(smoke(smoke_data_dir), str(folder)) == 2
    err = capsys.readouterr().err
    assert "error: --workdir" in err and "python -m msjax.train does not write into" in err
    assert tree(folder) == before


def test_default_report_folders_are_unique_per_checkpoint(
    checkpoints, smoke_data_dir, tmp_path, capsys, monkeypatch
):
    """a/final and b/final both wrote eval/final/DATASET_original/: the second replaced
    the first (the README's runs/*/best layout hit it)."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        args = evaluate_args(checkpoints / name / "final", smoke_data_dir, "unused")
        without_out = [str(a) for a in args if str(a) not in ("--out", "unused")]
        assert evaluate.main(without_out) == 0
    for name in ("a", "b"):
        home = checkpoints / name / "final"
        report = tmp_path / "eval" / home.relative_to(home.anchor) / "synthetic-target_original"
        saved = json.loads((report / "results.json").read_text())
        assert saved["checkpoint"] == str(home)


def test_a_report_of_another_checkpoint_is_not_replaced(
    checkpoints, smoke_data_dir, tmp_path, capsys
):
    out = tmp_path / "report"
    a, b = checkpoints / "a" / "final", checkpoints / "b" / "final"
    assert evaluate.main([str(x) for x in evaluate_args(a, smoke_data_dir, out)]) == 0
    before = tree(out)
    err = refused(capsys, evaluate.main, evaluate_args(b, smoke_data_dir, out),
                  "evaluate --out of another checkpoint")  # fmt: skip
    assert f"checkpoint: '{a}' -> '{b}'" in err
    assert tree(out) == before
    # The same evaluation again replaces its own report.
    assert evaluate.main([str(x) for x in evaluate_args(a, smoke_data_dir, out)]) == 0


def test_evaluate_refuses_a_runs_workdir_and_a_folder_inside_the_checkpoint(
    checkpoints, finished_run, smoke_data_dir, capsys
):
    before = tree(finished_run)
    err = refused(capsys, evaluate.main,
                  evaluate_args(checkpoints / "a" / "final", smoke_data_dir, finished_run),
                  "evaluate --out of another command")  # fmt: skip
    assert "is the workdir of a training run" in err
    assert tree(finished_run) == before
    inside = checkpoints / "a" / "final" / "eval"
    refused(capsys, evaluate.main, evaluate_args(checkpoints / "a" / "final", smoke_data_dir,
            inside), "evaluate --out inside the checkpoint")  # fmt: skip
    assert not inside.exists()


def test_predict_replaces_only_its_own_predictions(checkpoints, tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (40, 24), (90, 20, 200)).save(images / "a.png")
    a, b = checkpoints / "a" / "final", checkpoints / "b" / "final"
    out = tmp_path / "pred"
    assert predict.main([str(x) for x in predict_args(a, images, out)]) == 0
    before = tree(out)
    refused(
        capsys, predict.main, predict_args(b, images, out), "predict --out of another checkpoint"
    )
    assert tree(out) == before
    # A folder of the user's own files of those names (no mark): not replaced either.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a_color.png").write_bytes(b"the user's picture")
    refused(
        capsys, predict.main, predict_args(a, images, mine), "predict over files it did not write"
    )
    assert (mine / "a_color.png").read_bytes() == b"the user's picture"


def test_a_folder_inside_what_a_run_manages_is_refused(finished_run, smoke_data_dir, capsys):
    """A workdir inside another run's checkpoints/ trained (exit 0) where that run's Orbax
    manager prunes and its next export replaces."""
    (finished_run / "checkpoints").mkdir()
    inside = finished_run / "checkpoints" / "x"
    fails(capsys, smoke(smoke_data_dir), inside, "workdir inside a run's checkpoints")
    assert os.listdir(finished_run / "checkpoints") == []
