"""The weights folder: an Orbax checkpoint plus metadata, written atomically, loaded strictly.

A converted weights folder holds
  OUT_DIR/variables/      an Orbax checkpoint of {'params': ..., 'batch_stats': ...}
  OUT_DIR/metadata.json   where the weights came from and what they expect

The metadata is what makes weights usable without guessing: the model architecture
(classes, block counts, width, stride placement, ASPP branches) and the input
normalisation the weights were trained with ('caffe_bgr' for the original's DeepLab
weights, 'torchvision_rgb' for torchvision's ResNet-101). `python -m msjax.convert`, the
trainer's `best/` and `final/` exports and the tests all write this format.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax.errors import WeightsError
from msjax.models import DeepLabV2
from msjax.weights.names import Path, flatten, torch_key

METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = "msjax-weights/1"

# Fields of DeepLabV2 fixed by the weights themselves; anything else (BN mode, atrous
# implementation, dtype) is a run-time choice.
ARCHITECTURE_FIELDS = ("num_classes", "blocks", "width", "stride_on")
HEADS = ("layer5", "layer6")


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
