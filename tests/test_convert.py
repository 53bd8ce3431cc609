"""Converter tests: each weight layout -> Orbax -> msjax model, against the PyTorch reference.

Parity is measured as max|msjax - torch| / max|torch| over whole logit maps, in float32 with
matmul precision 'highest'. Models are random-initialised with non-trivial BN statistics
(tests/reference/deeplabv2_torch.py), saved in each of the four file layouts, converted with
the real converter and loaded with `msjax.weights.load`.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from msjax import convert, weights
from msjax.weights import WeightsError, names, pytorch
from tests.reference.deeplabv2_torch import (
    DeepLabV2Torch,
    forward_nhwc,
    load_flax_heads_,
    randomize_,
    save_in_layout,
)

TOL = 1e-5
TINY = dict(num_classes=5, blocks=(1, 2, 2, 1), width=8)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def torch_batch_stats(model: DeepLabV2Torch):
    """{flax path: running statistic} of a torch model, in the model's own dtype."""
    stats = {}
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            stats[names.flax_path(key, value.ndim)[1]] = value.numpy()
    return stats


class Converted:
    """A torch reference, the weights folder converted from it, and the loaded msjax model."""

    def __init__(self, tmp_dir, layout, seed=0, **arch):
        stride_on = "3x3" if layout == "torchvision" else "1x1"
        self.torch_model = randomize_(DeepLabV2Torch(stride_on=stride_on, **arch), seed=seed)
        self.src = os.path.join(tmp_dir, f"{layout}.pth")
        save_in_layout(self.torch_model, layout, self.src)
        self.out = os.path.join(tmp_dir, f"{layout}_converted")
        self.log = []
        # For files with heads the class count is a check; for init files it sizes the heads.
        self.metadata = pytorch.convert(
            self.src, self.out, num_classes=arch["num_classes"], log=self.log.append
        )
        self.model, self.variables = weights.load(self.out)
        if layout in ("deeplab-init", "torchvision"):
            load_flax_heads_(self.torch_model, self.variables["params"])
        self.apply = jax.jit(self.model.apply, static_argnames=("train", "mutable"))

    def check(self, images, train: bool):
        """Relative errors of (main, aux) and, in train mode, of the running statistics."""
        reference = copy.deepcopy(self.torch_model).train(train)
        ref = forward_nhwc(reference, images, per_image=train)
        if train:
            out, updated = self.apply(self.variables, images, train=True, mutable=("batch_stats",))
            stats = names.flatten(updated["batch_stats"])
            ref_stats = torch_batch_stats(reference)
            assert set(stats) == set(ref_stats)
            stats_err = max(rel_err(stats[p], ref_stats[p]) for p in stats)
        else:
            out, stats_err = self.apply(self.variables, images, train=False), 0.0
        assert all(
            o.dtype == np.float32 and o.shape == r.shape for o, r in zip(out, ref, strict=True)
        )
        return rel_err(out[0], ref[0]), rel_err(out[1], ref[1]), stats_err


@pytest.fixture(scope="module", params=pytorch.LAYOUTS)
def converted(request, tmp_path_factory):
    return Converted(tmp_path_factory.mktemp(request.param), request.param, **TINY)


@pytest.mark.parametrize("size", [(33, 47), (32, 48)], ids=["odd", "even"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train_per_image"])
def test_parity_per_layout(converted, size, train):
    images = np.random.RandomState(1).randn(2, *size, 3).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        main_err, aux_err, stats_err = converted.check(images, train)
    print(f"{converted.metadata['layout']} {size} train={train}: ", main_err, aux_err, stats_err)
    assert main_err <= TOL and aux_err <= TOL and stats_err <= TOL


def test_metadata_records_layout_and_normalisation(converted):
    meta = json.load(open(os.path.join(converted.out, weights.METADATA_FILE)))
    layout = meta["layout"]
    assert layout in pytorch.LAYOUTS
    assert meta["num_classes"] == TINY["num_classes"]
    assert meta["blocks"] == list(TINY["blocks"]) and meta["width"] == TINY["width"]
    assert meta["stride_on"] == ("3x3" if layout == "torchvision" else "1x1")
    expected_norm = "torchvision_rgb" if layout == "torchvision" else "caffe_bgr"
    assert meta["input_normalization"] == expected_norm
    assert meta["source_sha256"] == pytorch.sha256(converted.src)
    assert meta["aspp_branches"] == 2
    fresh = layout in ("deeplab-init", "torchvision")
    assert meta["heads"].startswith("fresh") == fresh
    assert any("initialised fresh" in line for line in converted.log) == fresh
    assert any(f"layout {layout} (detected)" in line for line in converted.log)


@pytest.mark.slow
def test_parity_full_resnet101(tmp_path):
    """The full [3, 4, 23, 3] network (44.6M parameters) at a small odd input size.

    Eval mode is checked in float32. In train mode (per-image BN through ~100 BN layers on
    6x7 feature maps) float32 round-off is amplified far beyond 1e-5 by the network itself:
    PyTorch's own float32 result is far from its float64 result (docs/parity.md). So train
    mode is checked where the comparison is meaningful: msjax float64 against PyTorch
    float64 (the same function), and msjax float32 no further from the float64 truth than
    twice PyTorch float32's distance.
    """
    ref = Converted(tmp_path, "released", seed=3, num_classes=19)
    count = sum(np.size(x) for x in jax.tree.leaves(ref.variables["params"]))
    assert count == 44_601_560
    images = np.random.RandomState(2).randn(2, 41, 53, 3).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        eval_errors = ref.check(images, train=False)
        train32 = ref.apply(ref.variables, images, train=True, mutable=("batch_stats",))[0]
    print("R101 eval float32: main/aux rel. errors", eval_errors[:2])
    assert max(eval_errors) <= TOL

    torch64 = copy.deepcopy(ref.torch_model).double().train()
    ref64 = forward_nhwc(torch64, images.astype(np.float64), per_image=True)
    with jax.enable_x64(True):
        model64 = ref.model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        variables64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), ref.variables)
        out64, stats64 = model64.apply(variables64, images, train=True, mutable=["batch_stats"])
        stats64 = {p: np.asarray(v) for p, v in names.flatten(stats64["batch_stats"]).items()}
    torch_stats = torch_batch_stats(torch64)
    errors64 = [rel_err(out64[i], ref64[i]) for i in range(2)]
    errors64.append(max(rel_err(stats64[p], torch_stats[p]) for p in torch_stats))
    print("R101 train float64: main/aux/stats rel. errors", errors64)
    assert max(errors64) <= 1e-10

    torch32 = forward_nhwc(copy.deepcopy(ref.torch_model).train(), images, per_image=True)
    msjax_err, torch_err = rel_err(train32[0], ref64[0]), rel_err(torch32[0], ref64[0])
    print(f"R101 train float32 vs float64 truth: msjax {msjax_err:.2e}, torch {torch_err:.2e}")
    assert msjax_err <= 2 * torch_err


# ---- errors -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state_dict():
    return randomize_(DeepLabV2Torch(**TINY)).state_dict()


def run_cli(args, capsys):
    code = convert.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_error_not_a_state_dict(tmp_path, capsys):
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    code, err = run_cli([tmp_path / "list.pth", tmp_path / "out"], capsys)
    assert code == 2 and "is not a state dict" in err and "list.pth" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_error_unknown_layout(tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    code, err = run_cli([tmp_path / "other.pth", tmp_path / "out"], capsys)
    assert code == 2 and "unknown layout" in err and "encoder.weight" in err
    for layout in pytorch.LAYOUTS:
        assert layout in err


def test_error_wrong_class_count(tmp_path, capsys, tiny_state_dict):
    torch.save(tiny_state_dict, tmp_path / "m.pth")
    code, err = run_cli([tmp_path / "m.pth", tmp_path / "out", "--num-classes", "19"], capsys)
    assert code == 2 and "has 5 classes" in err and "--num-classes 19" in err


def test_error_shape_mismatch_and_missing_key(tmp_path, capsys, tiny_state_dict):
    sd = dict(tiny_state_dict)
    sd["layer2.1.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    del sd["layer3.0.bn1.running_var"]
    torch.save(sd, tmp_path / "bad.pth")
    code, err = run_cli([tmp_path / "bad.pth", tmp_path / "out"], capsys)
    assert code == 2
    assert "shape mismatch at layer2.1.conv2.weight" in err
    assert "expected [3, 3, 16, 16], found [1, 1, 16, 16]" in err
    assert "missing layer3.0.bn1.running_var (expected [32])" in err
    assert not (tmp_path / "out").exists()


def test_error_unexpected_key(tmp_path, capsys, tiny_state_dict):
    sd = dict(tiny_state_dict)
    sd["layer4.0.extra.weight"] = torch.zeros(4)
    torch.save(sd, tmp_path / "extra.pth")
    code, err = run_cli([tmp_path / "extra.pth", tmp_path / "out"], capsys)
    assert code == 2 and "unexpected layer4.0.extra.weight" in err


def test_refuses_non_empty_output_unless_forced(tmp_path, capsys, tiny_state_dict):
    torch.save(tiny_state_dict, tmp_path / "m.pth")
    assert run_cli([tmp_path / "m.pth", tmp_path / "out"], capsys)[0] == 0
    before = (tmp_path / "out" / "metadata.json").read_text()
    code, err = run_cli([tmp_path / "m.pth", tmp_path / "out", "--seed", "3"], capsys)
    assert code == 2 and "not empty; pass --force" in err
    assert (tmp_path / "out" / "metadata.json").read_text() == before
    code, _ = run_cli([tmp_path / "m.pth", tmp_path / "out", "--force"], capsys)
    assert code == 0
    model, _ = weights.load(tmp_path / "out")
    assert model.num_classes == 5


def test_force_never_replaces_a_folder_that_is_not_weights(tmp_path, capsys, tiny_state_dict):
    """--force replaces an earlier weights folder only: never a folder of the user's files."""
    torch.save(tiny_state_dict, tmp_path / "m.pth")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    code, err = run_cli([tmp_path / "m.pth", tmp_path / "out", "--force"], capsys)
    assert code == 2 and "not a msjax weights folder" in err and "Traceback" not in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
    assert sorted(os.listdir(tmp_path)) == ["m.pth", "out"]  # no temporary folder left


def test_load_errors_name_the_problem(tmp_path, tiny_state_dict):
    with pytest.raises(WeightsError, match="metadata.json is missing"):
        weights.load(tmp_path)
    torch.save(tiny_state_dict, tmp_path / "m.pth")
    pytorch.convert(str(tmp_path / "m.pth"), str(tmp_path / "w"), log=lambda _: None)
    with pytest.raises(WeightsError, match="num_classes=19 was requested"):
        weights.load(tmp_path / "w", num_classes=19)
    # Run-time fields may change; the parameters still load.
    model, _ = weights.load(tmp_path / "w", bn_mode="frozen", aspp_branches=4)
    assert model.bn_mode == "frozen" and model.aspp_branches == 4


def test_key_mapping_round_trip():
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer3.22.conv2.weight",
        "layer1.0.downsample.1.weight",
        "layer6.conv2d_list.3.bias",
    ]:
        ndim = 4 if key.endswith("conv2.weight") or key == "conv1.weight" else 1
        collection, path = names.flax_path(key, ndim)
        assert names.torch_key(collection, path) == key
    assert names.flax_path("layer3.22.conv2.weight", 4) == (
        "params",
        ("layer3_22", "conv2", "kernel"),
    )
