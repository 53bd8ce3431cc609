"""PyTorch checkpoints of the original's ecosystem -> a msjax weights folder.

Four layouts are understood (docs/original.md, "Weights"):
- `original`: the original model's state_dict (`conv1.weight`, ..., `layer6.conv2d_list.3.bias`),
  with or without a `module.` prefix.
- `released`: a training checkpoint {epoch, iteration, state_dict, optimizer, best_MIou}
  whose state_dict keys carry `module.`.
- `deeplab-init`: the Caffe-converted DeepLab ImageNet init: every key has a wrapper prefix
  (dropped) and its own head under `layer5` (skipped, as the original does).
- `torchvision`: an ImageNet ResNet-101 (stride on the 3x3 conv, RGB mean/std input; `fc`
  dropped).
For the last two, both heads are freshly initialised, as the original does.

This is the only module of msjax that imports torch, and only to read the file; torch comes
with the `convert` extra (`pip install 'msjax[convert]'`). The command is
`python -m msjax.convert`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax import outputs
from msjax.errors import WeightsError
from msjax.models import DeepLabV2
from msjax.models.deeplabv2 import ASPPClassifier
from msjax.weights import folder, names

LAYOUTS = ("original", "released", "deeplab-init", "torchvision")
INPUT_NORMALIZATION = {
    "original": "caffe_bgr",
    "released": "caffe_bgr",
    "deeplab-init": "caffe_bgr",
    "torchvision": "torchvision_rgb",
}
DEFAULT_NUM_CLASSES = 19


def import_torch():
    """The torch module, or a WeightsError naming the extra that installs it."""
    try:
        import torch
    except ModuleNotFoundError:
        raise WeightsError(
            "msjax.convert reads PyTorch files and needs torch, which msjax does not install "
            "by default: pip install 'msjax[convert]' (or pip install -e '.[convert]' in a "
            "clone)."
        ) from None
    return torch


def read_pth(path: str) -> Any:
    """torch.load of a checkpoint on the CPU, tensors only (no arbitrary pickles)."""
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise WeightsError(f"Weight file {path} {what}.")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"Cannot read {path} as a PyTorch checkpoint: the file is empty.")
    torch = import_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            reason = (
                "it holds Python objects besides tensors, numbers and containers, which msjax "
                "does not unpickle (only plain state dicts and training checkpoints are read)"
            )
        else:
            reason = f"not a PyTorch file, or a damaged one ({_first_line(e)})"
    except Exception as e:  # torch raises zip, EOF and runtime errors for bad files
        reason = f"not a PyTorch file, or a damaged one ({type(e).__name__}: {_first_line(e)})"
    raise WeightsError(f"Cannot read {path} as a PyTorch checkpoint: {reason}.")


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_state_dict(obj: Any) -> bool:
    torch = import_torch()

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def detect_layout(obj: Any, source: str = "the checkpoint") -> str:
    """Which of LAYOUTS a loaded .pth object is; WeightsError if none."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return "released"
    if not _is_state_dict(obj):
        kind = type(obj).__name__
        raise WeightsError(
            f"{source} is not a state dict (a {kind}, not a mapping of names to tensors) "
            "nor a training checkpoint with a 'state_dict' entry."
        )
    keys = set(_strip_module_prefix(obj))
    if "conv1.weight" in keys:
        if any(k.startswith("layer6.") for k in keys):
            return "original"
        if "fc.weight" in keys:
            return "torchvision"
    elif "conv1.weight" in {k.split(".", 1)[-1] for k in keys}:
        return "deeplab-init"
    sample = ", ".join(sorted(keys)[:6])
    raise WeightsError(
        f"{source} has an unknown layout (keys start: {sample}, ...). Known layouts: "
        f"{', '.join(LAYOUTS)}; see the docstring of msjax/convert.py for what each holds."
    )


def extract_state_dict(obj: Any, layout: str) -> dict[str, np.ndarray]:
    """The backbone (+ heads) state_dict of `obj` in the original's key names, as numpy."""
    if layout == "released":
        if not isinstance(obj, Mapping) or not _is_state_dict(obj.get("state_dict")):
            raise WeightsError("Layout 'released' needs a dict with a 'state_dict' of tensors.")
        obj = obj["state_dict"]
    if not _is_state_dict(obj):
        raise WeightsError(f"Layout {layout!r} needs a state dict (a mapping of names to tensors).")
    sd = _strip_module_prefix(obj)
    if layout == "deeplab-init":
        # Drop the wrapper's first key component; skip the init file's own head ('layer5',
        # on layer4), so both heads start fresh as in the original.
        sd = {k.split(".", 1)[1]: v for k, v in sd.items() if "." in k}
        sd = {k: v for k, v in sd.items() if not k.startswith("layer5.")}
    elif layout == "torchvision":
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return {k: v.detach().cpu().float().numpy() for k, v in sd.items()}


def fresh_heads(model: DeepLabV2, seed: int) -> dict[str, Any]:
    """Freshly initialised layer5 / layer6 parameters, as the original's constructor makes."""
    head_inputs = {"layer5": model.width * 16, "layer6": model.width * 32}
    key = jax.random.key(seed)
    heads = {}
    for i, (name, channels) in enumerate(head_inputs.items()):
        head = ASPPClassifier(model.num_classes, branches=model.aspp_branches)
        x = jnp.zeros((1, 9, 9, channels))
        heads[name] = head.init(jax.random.fold_in(key, i), x)["params"]
    return heads


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_arguments(src: str, out_dir: str, layout: str, num_classes, aspp_branches, seed, force):
    """Raises a UserError naming the argument at fault, before anything is read or written."""
    if not str(src).strip():
        raise WeightsError("SRC is empty: give the .pth file to convert.")
    if layout != "auto" and layout not in LAYOUTS:
        raise WeightsError(f"--layout must be auto or one of {', '.join(LAYOUTS)}; got {layout!r}")
    if num_classes is not None and num_classes < 1:
        raise WeightsError(f"--num-classes {num_classes}: must be a positive number of classes.")
    if aspp_branches not in (2, 4):
        raise WeightsError(f"--aspp-branches {aspp_branches}: must be 2 (faithful) or 4.")
    if seed < 0:
        raise WeightsError(f"--seed {seed}: must be an integer >= 0.")
    out = os.fspath(outputs.check_output_folder(out_dir, "OUT_DIR"))
    if os.path.abspath(src) == out:
        raise WeightsError(f"SRC and OUT_DIR are the same path: {out}.")
    folder.check_replaceable(out, force)


def _model_and_variables(sd, detected: str, src: str, num_classes, aspp_branches, seed, log):
    """The DeepLabV2 a state_dict describes and its variables, strictly checked."""
    arch = names.infer_architecture(sd)
    has_heads = detected in ("original", "released")
    if has_heads and num_classes is not None and num_classes != arch["num_classes"]:
        raise WeightsError(
            f"{src} has {arch['num_classes']} classes (layer6.conv2d_list.0.bias has shape "
            f"[{arch['num_classes']}]) but --num-classes {num_classes} was requested."
        )
    if not has_heads:
        arch["num_classes"] = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
    model = DeepLabV2(
        num_classes=arch["num_classes"],
        blocks=tuple(arch["blocks"]),
        width=arch["width"],
        stride_on="3x3" if detected == "torchvision" else "1x1",
        aspp_branches=aspp_branches,
    )
    found = names.state_dict_to_variables(sd)
    expected = folder.model_shapes(model)
    if not has_heads:
        params = expected["params"]
        expected["params"] = {p: s for p, s in params.items() if p[0] not in folder.HEADS}
    folder.check_strict(found, expected, src)
    variables = {c: names.nest(found[c]) for c in ("params", "batch_stats")}
    if not has_heads:
        variables["params"].update(fresh_heads(model, seed))
        log(
            f"Heads layer5/layer6 are not in a {detected} file: initialised fresh "
            f"({model.num_classes} classes, seed {seed}), as the original does."
        )
    return model, variables, has_heads


def convert(
    src: str,
    out_dir: str,
    *,
    layout: str = "auto",
    num_classes: int | None = None,
    aspp_branches: int = 2,
    seed: int = 0,
    force: bool = False,
    log=print,
) -> dict[str, Any]:
    """Converts a .pth file into a weights folder; returns the metadata written.

    An existing OUT_DIR (with `force`) is replaced only once the new folder is complete.

    Args:
      src: the .pth file.
      out_dir: the folder to write (must not exist or be empty, unless `force`).
      layout: one of LAYOUTS, or 'auto' to detect it.
      num_classes: for files with heads, a check; for init files, the new heads' classes.
      aspp_branches: 2 (faithful) or 4 ASPP branches summed by the loaded model.
      seed: PRNG seed of freshly initialised heads.
      force: replace an existing, non-empty out_dir.
      log: where progress lines go.
    """
    check_arguments(src, out_dir, layout, num_classes, aspp_branches, seed, force)
    obj = read_pth(src)
    detected = detect_layout(obj, src) if layout == "auto" else layout
    log(f"{src}: layout {detected}" + (" (detected)" if layout == "auto" else " (as requested)"))
    sd = extract_state_dict(obj, detected)
    model, variables, has_heads = _model_and_variables(
        sd, detected, src, num_classes, aspp_branches, seed, log
    )
    folder.check_finite(variables, src, "convert")
    metadata = {
        "source": os.path.abspath(src),
        "source_sha256": sha256(src),
        "layout": detected,
        "num_classes": model.num_classes,
        "blocks": list(model.blocks),
        "width": model.width,
        "stride_on": model.stride_on,
        "aspp_branches": aspp_branches,
        "input_normalization": INPUT_NORMALIZATION[detected],
        "heads": "converted" if has_heads else f"fresh (seed {seed})",
    }
    folder.save(out_dir, variables, metadata, overwrite=force)
    count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
    log(
        f"Wrote {out_dir}: {count:,} parameters, {model.num_classes} classes, blocks "
        f"{list(model.blocks)}, stride on {model.stride_on}, "
        f"input {metadata['input_normalization']}"
    )
    return metadata
