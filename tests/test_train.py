"""Training end to end: configs, CLI errors, smoke runs, BN batching.

Resume, preemption and non-finite stops are in test_reliability.py; bad inputs in
test_errors.py; several devices and processes in test_distributed.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import optim, train
from msjax.configlib import ORIGINAL_LOSS
from msjax.data import labels
from msjax.data.preparation import prepare_one
from msjax.errors import ConfigError
from msjax.methods import METHODS
from msjax.models import tiny_deeplabv2
from msjax.training.loop import train_and_evaluate
from msjax.training.step import compute_loss
from tests.helpers import load_config, make_cityscapes, make_gta5, run_main

CONFIG_ARGS = {
    "gta2city": ["maxsquare", "iw", "iw_multi", "minent", "hard", "source", "source_multi"],
    "synthia2city": ["maxsquare", "iw", "iw_multi", "minent", "source", "source_multi"],
    "city2nthu": ["rome", "rio,iw", "tokyo,source", "source", "taipei"],
    "demo": [""],
}


@pytest.fixture(scope="module")
def synthetic_dir(smoke_data_dir):
    return smoke_data_dir


@pytest.mark.parametrize(
    "name, arg",
    [(n, a) for n, args in CONFIG_ARGS.items() for a in args for a in (a, f"{a},smoke")],
)
def test_every_config_builds_with_the_original_hyper_parameters(name, arg):
    c = load_config(name, arg.strip(","))
    classes = {"gta2city": 19, "synthia2city": 16, "city2nthu": 13, "demo": 19}[name]
    assert c.model.num_classes == classes
    source_only = "source" in arg
    if name != "demo":
        assert c.optim.momentum == 0.9 and c.optim.weight_decay == 5e-4
        assert c.optim.groups.to_dict() == {"backbone": 1.0, "head": 10.0}
        assert METHODS[c.method].multi_level == ("multi" in arg)
        assert c.eval.select == ("miou13" if name == "synthia2city" else "miou")
        if "smoke" not in arg:
            assert c.optim.lr == 2.5e-4 and c.batch_pairs == 1 and c.model.bn_mode == "per_image"
            assert c.model.blocks == (3, 4, 23, 3) and c.model.aspp_branches == 2
            # Source-only: 80,000 of a 200,000-step poly in all three settings, cross-city too.
            assert c.optim.iter_max == (200_000 if source_only else 29_760)
            assert c.train.steps == (80_000 if source_only else 29_750)
            # Source runs validate on the source val split, adaptation runs on the target's.
            validates_on = c.source.dataset if source_only else c.target.dataset
            assert c.eval.dataset == validates_on
            assert c.eval.split == ("test" if name == "city2nthu" and not source_only else "val")
    if "iw_multi" in arg:
        assert c.loss.lambda_target == 0.09
        assert c.target.size == c.eval.size == ("128x64" if "smoke" in arg else "1280x640")
    elif name != "demo" and not source_only:
        assert c.loss.lambda_target == 0.1
    if name == "city2nthu":
        assert c.loss.multi_threshold == c.loss.threshold == 0.98


def test_unknown_config_arguments_list_the_valid_ones():
    methods = "source, source_multi, control, minent, hard, maxsquare, iw, iw_multi"
    with pytest.raises(ConfigError, match=f"valid: a method of {methods}"):
        load_config("gta2city", "maxsqaure")
    with pytest.raises(ConfigError, match="valid: one of rome, rio, tokyo, taipei, a method"):
        load_config("city2nthu", "paris")


def test_misspelt_override_fails_before_training(tmp_path, capsys):
    status, err = run_main(
        train.main,
        capsys,
        *("--config", "gta2city.py:smoke", f"--workdir={tmp_path}/run"),
        "--config.loss.lamda_target=0.5",
    )
    assert status == 2
    assert "error: bad --config override or config file: 'lamda_target'" in err
    assert 'Did you mean "lambda_target" instead of "lamda_target"?' in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_bad_config_value_is_one_clear_message(tmp_path, synthetic_dir, capsys):
    status, err = run_main(
        train.main,
        capsys,
        *("--config", "gta2city.py:smoke", f"--workdir={tmp_path}/run"),
        f"--config.data_dir={synthetic_dir}",
        "--config.method=maxsqr",
    )
    assert status == 2
    assert "error: config.method='maxsqr': must be one of ['source', 'source_multi'" in err
    assert "Traceback" not in err


def test_each_command_in_one_process_parses_its_own_flags(tmp_path, capsys):
    """main(argv) twice in one process: the second sees only its own flags and overrides,
    not --verbose or a --config.FIELD of the first."""
    args = ("--config", "gta2city.py:smoke", f"--workdir={tmp_path}/run")
    status, err = run_main(train.main, capsys, *args, "--config.train.steps=0", "--verbose")
    assert status == 2 and "Traceback" in err and "config.train.steps=0" in err
    status, err = run_main(train.main, capsys, *args, "--config.train.steps=-1")
    assert status == 2 and "Traceback" not in err
    assert err == "error: config.train.steps=-1: must be an integer >= 1.\n"
    status, err = run_main(train.main, capsys, *args, "--config.loss.lambda_target=nan")
    assert status == 2 and "config.train.steps" not in err and "lambda_target=nan" in err


@pytest.mark.parametrize(
    "name, arg",
    [("gta2city", "iw_multi,smoke"), ("synthia2city", "source,smoke"), ("city2nthu", "rome,smoke")],
)
@pytest.mark.slow
def test_smoke_variant_trains_two_steps(tmp_path, synthetic_dir, name, arg):
    c = load_config(name, arg)
    c.data_dir = synthetic_dir
    summary = train_and_evaluate(c, str(tmp_path))
    assert summary["final_step"] == 2 and 0.0 <= summary["last_miou"] <= 1.0
    # A source run validates on the source style's val split; 16 classes select by mIoU13.
    style = "source" if "source" in arg else "target"
    assert summary["eval"] == f"synthetic-{style}/128x64/val"
    assert summary["select"] == ("miou13" if name == "synthia2city" else "miou")
    assert summary["best_score"] == summary["last_scores"][summary["select"]]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in losses)
    assert ("loss_target" in losses[0]) == ("source" not in arg)
    assert ("loss_multi" in losses[0]) == ("multi" in arg)
    adapting = "source" not in arg
    for key in ("easy_pixels", "easy_grad_minent", "easy_grad_maxsquare"):
        assert (key in losses[0]) == adapting
        assert not adapting or 0.0 <= losses[0][key] <= 1.0
    assert any("val/miou" in r for r in records)
    results = json.load(open(tmp_path / "results.json"))
    assert set(results["last_class_iou"]) == set(labels.class_names(c.model.num_classes))
    for folder in ("best", "final", "checkpoints/2", "tensorboard"):
        assert os.path.isdir(tmp_path / folder), folder
    meta = json.load(open(tmp_path / "final" / "metadata.json"))
    assert meta["num_classes"] == c.model.num_classes and meta["layout"] == "msjax-train"
    assert meta["select"] == summary["select"] and summary["select"] in meta


@pytest.mark.slow
def test_end_to_end_on_fixture_gta5_and_cityscapes(tmp_path):
    raw = tmp_path / "raw"
    make_gta5(raw / "gta5")
    make_cityscapes(raw / "cityscapes")
    data_dir = str(tmp_path / "data")
    prepare_one("gta5", "full", data_dir, raw_dir=raw / "gta5", split_lists="none")
    prepare_one("cityscapes", "full", data_dir, raw_dir=raw / "cityscapes", split_lists="none")
    c = load_config("gta2city", "maxsquare,smoke")
    c.data_dir = data_dir
    c.source.size = c.target.size = c.eval.size = "full"
    c.source.dataset, c.target.dataset, c.eval.dataset = "gta5", "cityscapes", "cityscapes"
    c.eval.batch_size = 1
    summary = train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["final_step"] == 2 and summary["best_score"] is not None


def pick(batch, i):
    return {k: v[i : i + 1] for k, v in batch.items()}


@pytest.mark.slow
def test_per_image_batch_of_four_equals_four_single_pairs():
    """With per-image BN, the gradient of a 4-pair batch is the mean of 4 single-pair ones.

    For the terms that are per-image means: source CE with the same number of labelled pixels
    in every image, and (IW) maximum squares. Thresholded terms (multi-level guidance, hard
    pseudo-labels) average over the pixels kept in the whole batch, as PyTorch's CE does at
    batch N, so they weight images by their kept pixels; at the faithful batch of 1 pair the
    two agree.
    """
    model = tiny_deeplabv2(num_classes=5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False)
    rng = np.random.RandomState(0)
    source = {
        "image": jnp.asarray(rng.randn(4, 32, 40, 3), jnp.float32),
        "label": jnp.asarray(rng.randint(0, 5, (4, 32, 40)), jnp.int32),
    }
    target = {"image": jnp.asarray(rng.randn(4, 32, 40, 3), jnp.float32)}
    loss_cfg = dict(ORIGINAL_LOSS)

    @jax.jit
    def grads(s, t):
        return jax.grad(compute_loss, has_aux=True)(
            variables["params"],
            variables["batch_stats"],
            s,
            t,
            model=model,
            method=METHODS["iw"],
            loss=loss_cfg,
        )[0]

    with jax.default_matmul_precision("highest"):
        batched = grads(source, target)
        singles = [grads(pick(source, i), pick(target, i)) for i in range(4)]
    mean = jax.tree.map(lambda *g: sum(g) / 4, *singles)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(mean), strict=True)
    )
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(mean))
    assert diff / scale <= 1e-5


def test_batch_not_divisible_by_devices_is_refused():
    from msjax import sharding

    mesh = sharding.make_mesh(jax.devices()[:1])
    sharding.check_global_batch(3, mesh)
    with pytest.raises(ConfigError, match="config.batch_pairs=0"):
        sharding.check_global_batch(0, mesh)


def test_optimizer_rules_cover_the_whole_model():
    model = tiny_deeplabv2(num_classes=5)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False)
    )
    rules = optim.faithful_rules(aspp_branches=2, aux_head_trained=False)
    labels = optim.label_params(shapes["params"], rules)
    assert set(jax.tree.leaves(labels)) == {"frozen", "head", "backbone"}
