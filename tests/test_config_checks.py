"""Every config field is checked before any work (msjax.config_checks), and a workdir that
cannot hold the run is refused before anything is written (docs/errors.md)."""

import json
import math
import os

import pytest

from msjax import config_checks, configlib, demo, train
from msjax.errors import ConfigError, UserError, WeightsError
from msjax.training.workdir import flatten
from tests.helpers import CATALOGUE, fails, load_config, run_cli, smoke


@pytest.fixture(scope="module")
def synthetic_dir(smoke_data_dir):
    return smoke_data_dir


def with_fields(config, **fields):
    """`config` with dotted fields (a__b for a.b) set, bypassing the ConfigDict's types."""
    with config.unlocked():
        for dotted, value in fields.items():
            *parents, leaf = dotted.split("__")
            node = config
            for part in parents:
                node = node[part]
            del node[leaf]  # a new value of another type (a config file could write it)
            node[leaf] = value
    return config


# case -> fields. Each value was accepted before its check existed, or failed later with a
# traceback or a misleading message; CATALOGUE (tests/helpers.py) holds the message.
BAD_FIELDS = {
    "steps 0": {"train__steps": 0},
    "lambda inf": {"loss__lambda_target": math.inf},
    "lr nan": {"optim__lr": math.nan},
    "steps past iter_max": {"train__steps": 30, "optim__iter_max": 20},
    "scale range reversed": {"source__random_scale": (2.0, 0.5)},
    "crop size in fractions": {"target__crop_size": (64.5, 32.2)},
    "ignore index of a class": {"loss__ignore_index": 3},
    "optimizer rules misspelt": {"optim__rules": "faithfull"},
    "optimizer rule not a regex": {"optim__rules": [("(", "head")]},
    "seed out of range": {"seed": 2**64},
    "unknown data set": {"source__dataset": "kitti"},
    "unknown data config": {"eval__size": "999x1"},
    "empty split": {"eval__split": ""},
    "data dir that is a file": {"data_dir": __file__},
    "init checkpoint missing": {"init__checkpoint": "/nonexistent/w"},
    "init checkpoint a .pth": {"init__checkpoint": __file__},
    "crop too large": {"target__crop_size": (100000, 100000)},
    "random scale too large": {"source__random_scale": (1.0, 100.0)},
    "model too wide or too deep": {"model__width": 100000},
    "validation batch too large": {"eval__batch_size": 100000},
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_bad_field_is_refused_naming_it(case):
    c = with_fields(load_config("gta2city", "iw,smoke"), **BAD_FIELDS[case])
    with pytest.raises(UserError) as e:
        config_checks.check_config(c)
    assert CATALOGUE[case] in str(e.value)
    assert "config." in str(e.value)


def test_every_config_field_has_a_check():
    """A field added to msjax.configlib without a check fails here (the 'by construction'
    rule of docs/errors.md: every config passes check_config before any work)."""
    fields = set(flatten(configlib.base_config().to_dict()))
    fields = {f for f in fields if not f.startswith("optim.groups.")} | {"optim.groups"}
    assert fields - config_checks.checked_fields() == set()


def test_every_shipped_config_passes_the_checks():
    for name, args in {"gta2city": ["iw", "source", "iw_multi,smoke"], "demo": ["smoke"],
                       "synthia2city": ["maxsquare"], "city2nthu": ["rome"]}.items():  # fmt: skip
        for arg in args:
            c = load_config(name, arg)
            if name == "demo":
                config_checks.check_demo(c.demo)
                for stage in demo.demo_stages(c, "WORKDIR"):
                    config_checks.check_config(stage.config, check_paths=False)
            else:
                config_checks.check_config(c)


@pytest.mark.parametrize(
    "fields, case",
    [({"train.steps": -1}, "steps -1"), ({"loss.lambda_target": math.nan}, "lambda nan")],
)
def test_invalid_values_fail_before_anything_is_written(
    tmp_path, capsys, synthetic_dir, fields, case
):
    """Unchecked, train.steps=-1 'succeeds' with untrained best/ and final/ exports, and a
    NaN lambda_target stops after a step with 'last good checkpoint (step None)'."""
    c = smoke(synthetic_dir)
    for dotted, value in fields.items():
        section, field = dotted.split(".")
        c[section][field] = value
    message = fails(capsys, c, tmp_path / "run", case)
    assert f"config.{next(iter(fields))}=" in message
    assert not (tmp_path / "run").exists()  # not even config.json


def test_empty_workdir_argument(tmp_path, capsys, synthetic_dir, monkeypatch):
    """`--workdir=` (an unset shell variable) must not train into the current folder."""
    monkeypatch.chdir(tmp_path)
    fails(capsys, smoke(synthetic_dir), "", "empty workdir")
    assert os.listdir(tmp_path) == []


def test_demo_fields_are_checked_before_the_first_stage():
    """Unchecked, demo.adapt_lr=nan surfaces only after the source stage has trained, and
    demo.source_steps=0 is reported as config.optim.iter_max=0."""
    for field, value, message in [
        ("source_steps", 0, "config.demo.source_steps=0: must be an integer >= 1"),
        ("adapt_steps", -5, "config.demo.adapt_steps=-5"),
        ("adapt_lr", math.nan, "config.demo.adapt_lr=nan: must be a finite number"),
    ]:
        c = load_config("demo", "smoke")
        c.demo[field] = value
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            config_checks.check_demo(c.demo)
    c = load_config("demo", "smoke")
    c.optim.momentum = 1.0  # a field every stage shares: refused before the first one
    with pytest.raises(ConfigError, match="config.optim.momentum=1.0"):
        demo.run_demo(c, "WORKDIR")


@pytest.mark.slow
def test_workdir_past_the_end_foreign_or_of_another_architecture(tmp_path, capsys, synthetic_dir):
    """A finished 4-step run, then: 2 steps (unchecked, step 4 is exported as a 2-step
    success), a wider model under --allow_config_change (unchecked, Orbax fails with 'move
    the checkpoint out of the way')."""
    run = tmp_path / "run"
    c = smoke(synthetic_dir, steps=4)
    c.train.checkpoint_every = 2
    assert train.run(c, str(run)) == 0
    before = sorted(os.listdir(run)), json.load(open(run / "results.json"))
    message = fails(capsys, smoke(synthetic_dir, steps=2), run, "workdir past the end")
    assert "checkpoint of step 4, beyond config.train.steps=2" in message
    wider = smoke(synthetic_dir, steps=6)
    wider.model.width = 16
    message = fails(capsys, wider, run, "resume with another architecture",
                    allow_config_change=True)  # fmt: skip
    assert "model.width: 8 -> 16" in message
    assert (sorted(os.listdir(run)), json.load(open(run / "results.json"))) == before


def test_folders_that_are_not_runs_are_refused(tmp_path, capsys, synthetic_dir):
    """--workdir pointing at a folder of the user's: its final/ or config.json would have
    been replaced by the run's."""
    (tmp_path / "a" / "final").mkdir(parents=True)
    (tmp_path / "a" / "final" / "thesis.tex").write_text("years of work")
    message = fails(capsys, smoke(synthetic_dir), tmp_path / "a", "workdir of other files")
    assert "holds ['final'] but no config.json" in message
    assert os.listdir(tmp_path / "a") == ["final"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"name": "my web app"}')
    message = fails(capsys, smoke(synthetic_dir), tmp_path / "b", "foreign config.json")
    assert "is not the config of a msjax run" in message
    assert (tmp_path / "b" / "config.json").read_text() == '{"name": "my web app"}'


def test_weights_error_names_what_the_path_is(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "metadata.json").write_text("{}")
    from msjax import weights

    with pytest.raises(WeightsError, match="training run's folder; pass its weights, e.g. "):
        weights.read_metadata(str(tmp_path / "run"))


@pytest.mark.slow
def test_distributed_without_a_cluster_cli(tmp_path):
    """jax.distributed.initialize() found no job to join: its ValueError is no traceback."""
    result = run_cli(
        "--config", "gta2city.py:smoke", f"--workdir={tmp_path}/run", "--config.distributed=True"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert CATALOGUE["distributed without a cluster"] in result.stderr
    assert not os.path.exists(tmp_path / "run")
