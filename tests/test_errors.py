"""The bad-input catalogue of docs/errors.md: one test per case.

Each case runs the trainer as the command line does (`msjax.train.run`, or the real command
in a subprocess where flag parsing is the point) and checks: exit status 2, one `error:`
message naming the field, file or step at fault, no traceback, and nothing saved before
lost. The data, converter and evaluation cases of the catalogue are tested beside their
modules (test_datasets.py, test_convert.py); the last test checks docs/errors.md lists
every case with its message.
"""

import errno
import json
import os
import re

import numpy as np
import pytest

from msjax import train
from msjax.data.pipeline import make_train_stream
from msjax.data.preparation import prepare_one
from msjax.training.checkpoints import RunCheckpoints
from msjax.training.workdir import prepare_workdir
from tests.helpers import (
    CATALOGUE,
    REPO,
    fails,
    make_cityscapes,
    make_gta5,
    run_cli,
    run_main,
    save_random_checkpoint,
    smoke,
    truncate,
    with_devices,
)

# A failed Orbax restore or save (truncated files, simulated ENOSPC) leaves coroutines of its
# other arrays unawaited; they are collected later, in whatever test runs then.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def synthetic_dir(smoke_data_dir):
    return smoke_data_dir


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """GTA5 and Cityscapes fixtures prepared at 'full' only."""
    root = tmp_path_factory.mktemp("fixture")
    make_gta5(root / "raw" / "gta5")
    make_cityscapes(root / "raw" / "cityscapes")
    prepare_one(
        "gta5", "full", str(root / "data"), raw_dir=root / "raw" / "gta5", split_lists="none"
    )
    prepare_one(
        "cityscapes",
        "full",
        str(root / "data"),
        raw_dir=root / "raw" / "cityscapes",
        split_lists="none",
    )
    return str(root / "data")


def real_data(data_dir, size="full"):
    """A smoke config reading prepared GTA5 -> Cityscapes (no synthetic generation)."""
    c = smoke(data_dir, arg="maxsquare,smoke")
    c.source.dataset, c.target.dataset, c.eval.dataset = "gta5", "cityscapes", "cityscapes"
    c.source.size = c.target.size = c.eval.size = size
    c.eval.batch_size = 1
    return c


def test_missing_data_dir(tmp_path, capsys):
    message = fails(
        capsys, real_data(str(tmp_path / "nowhere")), tmp_path / "run", "missing data dir"
    )
    assert "config.data_dir=" in message and str(tmp_path / "nowhere") in message


def test_empty_data_dir(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    message = fails(capsys, real_data(str(tmp_path / "data")), tmp_path / "run", "empty data dir")
    assert "gta5 is not prepared" in message and "python -m msjax.prepare gta5" in message


def test_data_dir_prepared_at_another_resolution(fixture_dir, tmp_path, capsys):
    c = real_data(fixture_dir)
    c.target.size = c.eval.size = "1024x512"
    message = fails(capsys, c, tmp_path / "run", "data dir prepared at another resolution")
    assert "cityscapes is not prepared at size 1024x512" in message


def test_wrong_class_count_between_checkpoint_and_config(synthetic_dir, tmp_path, capsys):
    save_random_checkpoint(tmp_path / "weights", num_classes=19)
    c = smoke(synthetic_dir)
    c.init.checkpoint = str(tmp_path / "weights")
    c.model.num_classes = 16
    message = fails(capsys, c, tmp_path / "run", "wrong class count")
    assert "num_classes=19" in message


def test_checkpoint_folder_that_is_not_orbax(synthetic_dir, tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.pth").write_bytes(b"torch pickle")
    c = smoke(synthetic_dir)
    c.init.checkpoint = str(tmp_path / "weights")
    message = fails(capsys, c, tmp_path / "run", "checkpoint folder that is not Orbax")
    assert "python -m msjax.convert" in message


def test_truncated_checkpoint_names_the_step_and_the_intact_one(synthetic_dir, tmp_path, capsys):
    c = smoke(synthetic_dir, steps=4)
    c.train.checkpoint_every = 2
    assert train.run(c, str(tmp_path)) == 0
    data = tmp_path / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d"
    biggest = max(data.iterdir(), key=lambda f: f.stat().st_size)
    truncate(biggest)
    c.train.steps = 6  # extending a run is allowed; the damaged step 4 is in the way
    message = fails(capsys, c, tmp_path, "truncated checkpoint")
    assert "step 4" in message and "to resume from step 2" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # nothing deleted


def test_unknown_config_argument_cli(tmp_path, capsys):
    args = ("--config", "gta2city.py:maxsqare", f"--workdir={tmp_path}/run")
    status, err = run_main(train.main, capsys, *args)
    assert status == 2 and "Traceback" not in err
    assert CATALOGUE["unknown config argument"] in err
    assert "valid: a method of source, source_multi, control, minent, hard, maxsquare" in err


def test_unwritable_workdir(synthetic_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    message = fails(capsys, smoke(synthetic_dir), tmp_path / "a_file" / "run", "unwritable workdir")
    assert str(tmp_path / "a_file" / "run") in message


@pytest.mark.slow
def test_workdir_of_another_config_is_refused_unless_allowed(synthetic_dir, tmp_path, capsys):
    assert train.run(smoke(synthetic_dir), str(tmp_path)) == 0
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    other = smoke(synthetic_dir, steps=4, arg="minent,smoke")
    message = fails(capsys, other, tmp_path, "workdir of another config")
    assert "method: 'iw' -> 'minent'" in message
    assert "--allow_config_change" in message and "train.steps" not in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    # Told to continue, it resumes at step 2 with the new loss and keeps both configs.
    assert train.run(other, str(tmp_path), allow_config_change=True) == 0
    results = json.load(open(tmp_path / "results.json"))
    assert results["start_step"] == 2 and results["final_step"] == 4
    assert len([f for f in os.listdir(tmp_path) if f.startswith("config.")]) == 2


def test_zero_or_negative_batch(synthetic_dir, tmp_path, capsys):
    for batch in (0, -2):
        c = smoke(synthetic_dir)
        c.batch_pairs = batch
        message = fails(capsys, c, tmp_path / "run", "zero or negative batch")
        assert f"config.batch_pairs={batch}" in message


@pytest.mark.slow
def test_batch_not_divisible_by_the_device_count_cli(tmp_path):
    """A real process: the device count is fixed when JAX starts."""
    result = run_cli(
        "--config",
        "gta2city.py:smoke",
        f"--workdir={tmp_path}/run",
        "--config.batch_pairs=3",
        env={"XLA_FLAGS": with_devices(2)["XLA_FLAGS"]},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "error: config.batch_pairs=3: the global batch must be a positive multiple of the "
        "number of devices (2: cpu)" in result.stderr
    )


def test_fewer_target_than_source_examples_both_streams_share_the_shorter_epoch(tmp_path, capsys):
    data = str(tmp_path / "data")
    prepare_one("synthetic-source", "128x64", data, max_examples=12)
    prepare_one("synthetic-target", "128x64", data, max_examples=5)
    c = smoke(data, steps=7)
    assert train.run(c, str(tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "target: synthetic-target/128x64/train, 5 examples" in out
    assert CATALOGUE["fewer target than source examples"] in out
    assert "source: synthetic-source/128x64/train, 12 examples on this host, an epoch every 5 " \
        "steps (the first 5 of 12 batches of a permutation" in out  # fmt: skip
    results = json.load(open(tmp_path / "run" / "results.json"))
    # The original's rule (a zip of two loaders): both streams restart after 5 steps.
    assert results["data"]["source"]["steps_per_epoch"] == 5
    assert results["data"]["target"]["steps_per_epoch"] == 5
    assert results["data"]["source"]["full_steps_per_epoch"] == 12
    # The target stream sees each of its examples exactly once per epoch, in a new order.
    stream = make_train_stream(
        dict(dataset="synthetic-target", size="128x64", batch_size=1, data_dir=data,
             flip=False, blur=False, num_classes=19, seed=1),
    )  # fmt: skip
    images = [next(stream)["image"][0] for _ in range(10)]
    keys = [hash(x.tobytes()) for x in images]
    assert len(set(keys[:5])) == 5 and set(keys[:5]) == set(keys[5:])
    assert keys[:5] != keys[5:]  # a new order


@pytest.mark.slow
def test_disk_full_while_saving(synthetic_dir, tmp_path, capsys, monkeypatch):
    from orbax.checkpoint._src.path import async_path

    c = smoke(synthetic_dir, steps=6)
    c.train.checkpoint_every = 2
    write_text = async_path.write_text

    async def disk_full_at_step_4(path, text):
        if "/4.orbax-checkpoint-tmp" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await write_text(path, text)

    monkeypatch.setattr(async_path, "write_text", disk_full_at_step_4)
    message = fails(capsys, c, tmp_path, "disk full while saving")
    assert "step 4" in message and "step 2 is intact" in message
    monkeypatch.undo()
    ckpts = RunCheckpoints(str(tmp_path))
    assert ckpts.all_steps() == [2]
    ckpts.close()
    # Space freed: the same command resumes from step 2 and finishes.
    assert train.run(c, str(tmp_path)) == 0
    assert json.load(open(tmp_path / "results.json"))["start_step"] == 2


def test_verbose_shows_the_traceback(synthetic_dir, tmp_path, capsys):
    c = smoke(synthetic_dir)
    c.batch_pairs = 0
    assert train.run(c, str(tmp_path), verbose=True) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: config.batch_pairs=0")


def test_config_changes_that_are_allowed(synthetic_dir, tmp_path):
    c = smoke(synthetic_dir)
    prepare_workdir(str(tmp_path), c)
    # No checkpoint yet (a start that failed): any new config takes the workdir over.
    c.method = "minent"
    prepare_workdir(str(tmp_path), c)
    assert json.load(open(tmp_path / "config.json"))["method"] == "minent"
    # With checkpoints: bookkeeping fields (length, intervals, data location) may change.
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    c.train.steps, c.eval.every_steps, c.data_dir = 10, 5, str(tmp_path / "elsewhere")
    prepare_workdir(str(tmp_path), c)


def test_errors_md_lists_every_case_with_its_message():
    """Every case is a row of docs/errors.md with its message and a test that exists."""
    text = open(os.path.join(REPO, "docs", "errors.md")).read()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in CATALOGUE:
            assert cells[0] not in rows, f"{cells[0]}: listed twice"
            rows[cells[0]] = line
    assert set(rows) == set(CATALOGUE), set(CATALOGUE) - set(rows)
    for case, fragment in CATALOGUE.items():
        assert fragment in rows[case].replace("\\|", "|"), case
        tests = re.findall(r"tests/(\w+)\.py::(\w+)", rows[case])
        assert tests, f"{case}: no test named"
        for module, name in tests:
            source = open(os.path.join(REPO, "tests", f"{module}.py")).read()
            assert f"def {name}(" in source, f"{case}: tests/{module}.py has no {name}"
    assert np.all(
        [os.path.exists(os.path.join(REPO, p)) for p in re.findall(r"tests/\w+\.py", text)]
    )


def test_deterministic_flag_after_jax_started_is_an_error_not_ignored(
    synthetic_dir, tmp_path, capsys
):
    import jax

    jax.devices()  # this process's JAX backend is running
    c = smoke(synthetic_dir)
    c.deterministic = True
    assert train.run(c, str(tmp_path)) == 2
    assert "would ignore the flag: set XLA_FLAGS=" in capsys.readouterr().err
