"""One pass of a model over an evaluation split: the loop every evaluation uses.

Training validation (`msjax.training.validation`), the study's scores and `msjax.evaluate`
(`msjax.evaluation.protocol`) all run `evaluate_split`: host-local batches (each example
once, the last batch padded and masked) -> the jitted step of `inference.make_eval_step`
(predictions at the label's size with flips and scales, their confusion matrix, optional
extra sums) -> an exact int64 confusion matrix and the extras summed over the split.
`on_batch` sees every batch with its step outputs (pictures, label PNGs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np

from msjax import sharding
from msjax.evaluation import metrics


def evaluate_split(
    step,
    variables,
    batches: Iterable[dict],
    num_classes: int,
    *,
    mesh=None,
    on_batch: Callable[[dict, dict], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """(int64 confusion matrix [C, C], {extra name: summed numpy value}) of one pass.

    Args:
      step: from `inference.make_eval_step`.
      variables: the model's {'params', 'batch_stats'}.
      batches: dicts with 'image', 'label', 'mask' (and anything else, e.g. 'id').
      num_classes: C.
      mesh: place each batch on this device mesh (split along the batch axis); None: the
        default device.
      on_batch: called with (host batch, step outputs) after each step.
    """
    acc = metrics.ConfusionAccumulator(num_classes)
    sums = {}
    for local in batches:
        arrays = {k: local[k] for k in ("image", "label", "mask")}
        batch = sharding.to_global(arrays, mesh) if mesh is not None else arrays
        out = step(variables, batch["image"], batch["label"], batch["mask"])
        acc.add(out["matrix"], pixels=int(np.prod(batch["label"].shape)))
        for name, value in out.items():
            if name not in ("matrix", "pred"):
                sums[name] = value if name not in sums else sums[name] + value
        if on_batch is not None:
            on_batch(local, out)
    return acc.result(), {k: np.asarray(v) for k, v in jax.device_get(sums).items()}
