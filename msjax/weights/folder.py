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
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax import outputs
from msjax.errors import OutputError, WeightsError
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


def check_finite(variables: Mapping[str, Any], source: str, doing: str) -> None:
    """Raises WeightsError naming the arrays of `variables` that hold NaN or Inf.

    Args:
      variables: {'params': ..., 'batch_stats': ...} (nested or flat).
      source: what holds them, for the message (a folder, a .pth file).
      doing: what is refused ('load', 'write', 'convert').
    """
    bad = []
    for collection in ("params", "batch_stats"):
        for path, value in flatten(variables.get(collection, {})).items():
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                bad.append(torch_key(collection, path))
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise WeightsError(
            f"{source} holds NaN or Inf values in {len(bad)} array(s) ({listed}): weights of "
            f"a diverged or damaged model; msjax does not {doing} them."
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


def is_weights_folder(path) -> bool:
    """Whether `path` is a folder holding a weights folder's metadata.json."""
    return os.path.isfile(os.path.join(path, METADATA_FILE))


def check_replaceable(out_dir: str, overwrite: bool) -> None:
    """Raises WeightsError unless `out_dir` may receive a weights folder.

    A missing or empty folder always may; an existing weights folder only with `overwrite`;
    a folder of anything else never (replacing it would delete files msjax did not write).
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise WeightsError(f"{out_dir} is a file; give a folder to write the weights to.")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not is_weights_folder(out_dir):
        raise WeightsError(
            f"{out_dir} holds files that are not a msjax weights folder (no {METADATA_FILE}); "
            "msjax replaces only its own weights folders. Choose another folder."
        )
    if not overwrite:
        raise WeightsError(f"Output folder {out_dir} exists and is not empty; pass --force.")


def save(
    out_dir: str, variables: Mapping[str, Any], metadata: Mapping[str, Any], overwrite=False
) -> None:
    """Writes `variables` (nested params / batch_stats) and `metadata` to a new folder.

    The folder is written under a temporary name beside `out_dir` and swapped in at the end
    (`msjax.outputs.staged_folder`), so an interrupted or failed write never leaves a folder
    that looks complete, and with `overwrite` an existing weights folder is replaced only
    once the new one is complete. A folder that is not a weights folder is never replaced.
    In a multi-process job only the calling process takes part (Orbax's cross-process
    barriers are switched off), so one process can save alone.

    Raises:
      WeightsError: `out_dir` is a file, a non-empty folder without `overwrite`, or a folder
        of something else.
      OutputError: the write failed (disk full, permissions); `out_dir` is as it was.
    """
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    check_replaceable(out_dir, overwrite)
    check_finite(variables, f"The weights for {out_dir}", "write")
    with outputs.staged_folder(out_dir, "weights folder") as tmp_dir:
        try:
            alone = ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(), active_processes={jax.process_index()}
            )
            with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
                path = os.path.join(tmp_dir, VARIABLES_DIR)
                ckptr.save(path, jax.tree.map(np.asarray, variables))
                ckptr.wait_until_finished()
            with open(os.path.join(tmp_dir, METADATA_FILE), "w") as f:
                json.dump({"format": FORMAT_VERSION, **metadata}, f, indent=2, sort_keys=True)
                f.write("\n")
        except Exception as e:  # OSError, or TensorStore's error for a full disk
            if not isinstance(e, OSError) and outputs.storage_problem(e) is None:
                raise
            reason = outputs.storage_problem(e) or e.strerror or e
            raise OutputError(
                f"Could not write the weights folder {out_dir}: {reason}. Anything at "
                f"{out_dir} before is intact."
            ) from e


def read_metadata(weights_dir: str) -> dict[str, Any]:
    """The metadata of a converted weights folder, with a clear error if it is not one."""
    path = os.path.join(weights_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise WeightsError(
            f"{weights_dir} is not a converted weights folder: {_why_not(weights_dir)}"
        )
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"Cannot read {path}: {e}") from None
    if metadata.get("format") != FORMAT_VERSION:
        raise WeightsError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT_VERSION}")
    return metadata


def _why_not(path: str) -> str:
    """What `path` is instead of a weights folder, and what to pass."""
    convert = "Create one with `python -m msjax.convert SRC.pth OUT_DIR`."
    if not os.path.exists(path):
        return f"it does not exist. {convert}"
    if os.path.isfile(path):
        return f"it is a file (a .pth must be converted first). {convert}"
    runs = [sub for sub in ("best", "final") if is_weights_folder(os.path.join(path, sub))]
    if runs:
        return (
            f"it is a training run's folder; pass its weights, e.g. {os.path.join(path, runs[-1])}."
        )
    return f"{METADATA_FILE} is missing. {convert}"


def _why_unreadable(error: Exception) -> str:
    """One line on why Orbax could not read a variables folder, and what to do."""
    text = str(error)
    if "NOT_FOUND" in text or isinstance(error, FileNotFoundError):
        return (
            "files of it are missing (an incomplete copy?). Copy the whole weights folder "
            "again, or write it again (python -m msjax.convert, or the run's export)."
        )
    return f"{outputs.short_reason(error)}. The folder is damaged; write it again."


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
        reason = _why_unreadable(e)
        raise WeightsError(f"Cannot restore the weights in {variables_dir}: {reason}") from None
    flat = {c: flatten(restored.get(c, {})) for c in ("params", "batch_stats")}
    check_strict(flat, model_shapes(model), variables_dir)
    check_finite(restored, weights_dir, "load")
    return model, {c: jax.tree.map(jnp.asarray, restored[c]) for c in ("params", "batch_stats")}
