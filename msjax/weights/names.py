"""PyTorch state_dict names <-> Flax variable paths, with no torch import.

`layer3.5.conv2.weight` [O, I, kh, kw] is `params/layer3_5/conv2/kernel` [kh, kw, I, O];
`bn1.running_var` is `batch_stats/bn1/var`. State dicts arrive as {name: numpy array}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from msjax.errors import WeightsError

_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}

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


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """A PyTorch state_dict as nested Flax variables {'params': ..., 'batch_stats': ...}."""
    flat = state_dict_to_variables(state_dict)
    return {collection: nest(flat[collection]) for collection in ("params", "batch_stats")}
