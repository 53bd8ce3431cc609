"""Checkpoints of a training run: resumable train states and exported weights.

    WORKDIR/checkpoints/<step>/   Orbax: the whole TrainState + a JSON record (latest k kept)
    WORKDIR/best/                 weights of the best target-val mIoU so far   } msjax.weights
    WORKDIR/final/                weights at the end of the run                } format

Train states are what `python -m msjax.train` resumes from (automatically, when WORKDIR holds
one). The `best` and `final` folders have the same format as `python -m msjax.convert`'s
output, so `msjax.evaluate`, `msjax.predict` and `config.init.checkpoint` take them as they
are. Nothing is ever deleted at start-up; saves are asynchronous and atomic (Orbax writes to
a temporary folder and renames it), so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from msjax import weights


class RunCheckpoints:
    """The latest-k train states of one workdir.

    Args:
      workdir: the run's folder.
      keep: how many train states to keep (the newest).
    """

    def __init__(self, workdir: str, keep: int = 2):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state, record: Mapping[str, Any]) -> None:
        """Starts saving `state` (any pytree) and a JSON `record` at `step` (asynchronous)."""
        tree = flax.serialization.to_state_dict(state)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), record=ocp.args.JsonSave(dict(record))
            ),
            force=True,
        )

    def restore(self, target, step: int | None = None):
        """Restores (state, record) at `step` (default: latest) into the structure of `target`.

        Args:
          target: a state (or abstract state of jax.ShapeDtypeStruct with shardings) with the
            same structure; it decides where the restored arrays live.
        """
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(_abstract, flax.serialization.to_state_dict(target))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
            ),
        )
        return flax.serialization.from_state_dict(target, restored.state), dict(restored.record)

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def export_weights(path: str, params, batch_stats, metadata: Mapping[str, Any]) -> None:
    """Writes params and BN statistics as a msjax.weights folder (replacing an older one).

    Args:
      path: destination folder (e.g. WORKDIR/best).
      params, batch_stats: the model variables (gathered to the host).
      metadata: msjax.weights metadata (architecture, input normalisation) plus run facts.
    """
    variables = {
        "params": jax.device_get(params),
        "batch_stats": jax.device_get(batch_stats),
    }
    weights.save(path, variables, metadata, overwrite=True)
