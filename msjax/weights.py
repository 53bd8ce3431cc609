"""Converted weights: PyTorch key mapping, strict merging, and the Orbax + metadata format.

A converted weights folder holds
  OUT_DIR/variables/      an Orbax checkpoint of {'params': ..., 'batch_stats': ...}
  OUT_DIR/metadata.json   where the weights came from and what they expect

The metadata is what makes weights usable without guessing: the model architecture
(classes, block counts, width, stride placement, ASPP branches) and the input
normalisation the weights were trained with ('caffe_bgr' for the original's DeepLab
weights, 'torchvision_rgb' for torchvision's ResNet-101).

Nothing here imports torch: state dicts arrive as {name: numpy array}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax.models import DeepLabV2

METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = "msjax-weights/1"

# Fields of DeepLabV2 fixed by the weights themselves; anything else (BN mode, atrous
# implementation, dtype) is a run-time choice.
ARCHITECTURE_FIELDS = ("num_classes", "blocks", "width", "stride_on")
HEADS = ("layer5", "layer6")

_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


class WeightsError(ValueError):
    """A user-facing problem with a weight file or a converted weights folder."""


Path = tuple[str, ...]


def flax_path(torch_key: str, ndim: int) -> tuple[str, Path]:
    """Maps a PyTorch state_dict key to (collection, Flax path).

    `layer3.5.conv2.weight` -> ('params', ('layer3_5', 'conv2', 'kernel'));
    `layer1.0.downsample.1.running_var` -> ('batch_stats', ('layer1_0', 'downsample_1', 'var')).
    A numeric component joins its predecessor with '_', exactly as the model names modules.
    """
    *modules, leaf = torch_key.split(".")
    path: list[str] = []
    for part in modules:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    if leaf == "weight" and ndim == 4:
        return "params", (*path, "kernel")
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", (*path, _BN_LEAVES[leaf])
    if leaf in _BN_LEAVES:
        return "params", (*path, _BN_LEAVES[leaf])
    raise WeightsError(f"Unexpected state_dict key {torch_key!r}: unknown leaf name {leaf!r}.")


def torch_key(collection: str, path: Path) -> str:
    """The inverse of `flax_path`, for error messages that users can grep their files for."""
    inverse = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    parts = []
    for name in path[:-1]:
        head, _, index = name.rpartition("_")
        parts.extend([head, index] if head and index.isdigit() else [name])
    return ".".join([*parts, inverse.get(path[-1], path[-1])])


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict[Path, Any]]:
    """Renames and transposes a PyTorch state_dict into flat Flax collections.

    Conv weights [O, I, kh, kw] become kernels [kh, kw, I, O]; `num_batches_tracked` is
    dropped. Returns {'params': {path: array}, 'batch_stats': {path: array}}.
    """
    out: dict[str, dict[Path, Any]] = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        value = np.asarray(value, dtype=np.float32)
        collection, path = flax_path(key, value.ndim)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        out[collection][path] = value
    return out


def infer_architecture(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Block counts, width and (if the heads are present) class count of a state_dict."""
    if "conv1.weight" not in state_dict:
        raise WeightsError("The state_dict has no 'conv1.weight': it is not a ResNet backbone.")
    blocks = []
    for layer in range(1, 5):
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        if not ids:
            raise WeightsError(f"The state_dict has no 'layer{layer}.*' keys.")
        blocks.append(max(ids) + 1)
    arch: dict[str, Any] = {
        "blocks": blocks,
        "width": int(np.shape(state_dict["conv1.weight"])[0]),
    }
    head_bias = "layer6.conv2d_list.0.bias"
    if head_bias in state_dict:
        arch["num_classes"] = int(np.shape(state_dict[head_bias])[0])
    return arch


def flatten(tree: Mapping) -> dict[Path, Any]:
    """Nested dict -> {path: leaf}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update({(key, *p): v for p, v in flatten(value).items()})
        else:
            flat[(key,)] = value
    return flat


def nest(flat: Mapping[Path, Any]) -> dict:
    """{path: leaf} -> nested dict; the inverse of `flatten`."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def model_shapes(model: DeepLabV2) -> dict[str, dict[Path, tuple[int, ...]]]:
    """Flat {collection: {path: shape}} of a model's variables, without computing them."""
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False)
    )
    return {c: {p: tuple(v.shape) for p, v in flatten(abstract[c]).items()} for c in abstract}


def check_strict(
    found: Mapping[str, Mapping[Path, Any]],
    expected: Mapping[str, Mapping[Path, tuple[int, ...]]],
    source: str,
) -> None:
    """Raises WeightsError naming every missing, unexpected or wrongly shaped variable."""
    problems = []
    for collection in expected:
        have, want = found.get(collection, {}), expected[collection]
        for path in sorted(set(want) - set(have)):
            problems.append(f"missing {torch_key(collection, path)} (expected {list(want[path])})")
        for path in sorted(set(have) - set(want)):
            problems.append(f"unexpected {torch_key(collection, path)}")
        for path in sorted(set(have) & set(want)):
            shape = tuple(np.shape(have[path]))
            if shape != want[path]:
                problems.append(
                    f"shape mismatch at {torch_key(collection, path)} ('{'/'.join(path)}'): "
                    f"expected {list(want[path])}, found {list(shape)}"
                )
    if problems:
        listed = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise WeightsError(
            f"{source} does not match the model ({len(problems)} problems):\n  {listed}{more}"
        )


def model_from_metadata(metadata: Mapping[str, Any], **overrides) -> DeepLabV2:
    """The DeepLabV2 the metadata describes; `overrides` set run-time fields (bn_mode, ...)."""
    for field in ARCHITECTURE_FIELDS:
        if field in overrides and _as_tuple(overrides[field]) != _as_tuple(metadata[field]):
            raise WeightsError(
                f"{field}={overrides[field]!r} was requested but the weights have "
                f"{field}={metadata[field]!r}; the architecture is fixed by the weights."
            )
    fields = {f: metadata[f] for f in ARCHITECTURE_FIELDS}
    fields["blocks"] = tuple(fields["blocks"])
    fields["aspp_branches"] = metadata.get("aspp_branches", 2)
    fields.update(overrides)
    return DeepLabV2(**fields)


def _as_tuple(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def save(
    out_dir: str, variables: Mapping[str, Any], metadata: Mapping[str, Any], overwrite=False
) -> None:
    """Writes `variables` (nested params / batch_stats) and `metadata` to a new folder.

    The folder is written under a temporary name and renamed at the end, so an interrupted
    conversion never leaves a folder that looks complete; with `overwrite`, an existing
    folder is replaced only once the new one is complete. In a multi-process job only the
    calling process takes part (Orbax's cross-process barriers are switched off), so one
    process can save alone.
    """
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise WeightsError(f"Output folder {out_dir} exists and is not empty; pass --force.")
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        os.makedirs(tmp_dir)
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
            ckptr.save(os.path.join(tmp_dir, VARIABLES_DIR), jax.tree.map(np.asarray, variables))
            ckptr.wait_until_finished()
        with open(os.path.join(tmp_dir, METADATA_FILE), "w") as f:
            json.dump({"format": FORMAT_VERSION, **metadata}, f, indent=2, sort_keys=True)
            f.write("\n")
    except BaseException:
        # A failed write (disk full, interrupt) must not leave a half folder behind.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        old_dir = f"{out_dir}.old-{os.getpid()}"
        os.rename(out_dir, old_dir)
        os.rename(tmp_dir, out_dir)
        shutil.rmtree(old_dir)
    else:
        os.rename(tmp_dir, out_dir)


def read_metadata(weights_dir: str) -> dict[str, Any]:
    """The metadata of a converted weights folder, with a clear error if it is not one."""
    path = os.path.join(weights_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise WeightsError(
            f"{weights_dir} is not a converted weights folder: {METADATA_FILE} is missing. "
            "Create one with `python -m msjax.convert SRC.pth OUT_DIR`."
        )
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"Cannot read {path}: {e}") from None
    if metadata.get("format") != FORMAT_VERSION:
        raise WeightsError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT_VERSION}")
    return metadata


def load(weights_dir: str, **model_overrides) -> tuple[DeepLabV2, dict[str, Any]]:
    """Loads a converted weights folder.

    Args:
      weights_dir: a folder written by `python -m msjax.convert`.
      **model_overrides: run-time DeepLabV2 fields (bn_mode, atrous, dtype, aspp_branches).

    Returns:
      (model, variables): the model configured from the metadata, and
      {'params': ..., 'batch_stats': ...} as jax arrays, checked strictly against it.
    """
    import orbax.checkpoint as ocp

    weights_dir = os.path.abspath(weights_dir)
    metadata = read_metadata(weights_dir)
    model = model_from_metadata(metadata, **model_overrides)
    variables_dir = os.path.join(weights_dir, VARIABLES_DIR)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(variables_dir)
    except Exception as e:  # Orbax raises many types for unreadable folders.
        raise WeightsError(f"Cannot restore the Orbax checkpoint {variables_dir}: {e}") from None
    flat = {c: flatten(restored.get(c, {})) for c in ("params", "batch_stats")}
    check_strict(flat, model_shapes(model), variables_dir)
    return model, {c: jax.tree.map(jnp.asarray, restored[c]) for c in ("params", "batch_stats")}
