"""Checkpoints of a training run: resumable train states and exported weights.

    WORKDIR/checkpoints/<step>/   Orbax: the whole TrainState + a JSON record (latest k kept)
    WORKDIR/best/                 weights of the best validation mIoU so far   } msjax.weights
    WORKDIR/final/                weights at the end of the run                } format

Train states are what `python -m msjax.train` resumes from (automatically, when WORKDIR holds
one). The `best` and `final` folders have the same format as `python -m msjax.convert`'s
output, so `msjax.evaluate`, `msjax.predict` and `config.init.checkpoint` take them as they
are. Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it),
so a crash, even in the middle of a save, leaves the previous checkpoint intact; the
half-written temporary folder is removed when the run starts again. A save or restore that
fails raises CheckpointError naming the step, the folder and the steps still intact.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from msjax import outputs, weights
from msjax.errors import CheckpointError


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
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True
            ),
        )
        self._pending_step = None

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, record: Mapping[str, Any]) -> None:
        """Starts saving `state` (any pytree) and a JSON `record` at `step` (asynchronous).

        Raises:
          CheckpointError: this save, or the previous one still being written, failed.
        """
        tree = flax.serialization.to_state_dict(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(tree), record=ocp.args.JsonSave(dict(record))
        )
        # Orbax reports a failed asynchronous save when the next one starts.
        with self._reporting_failures(self._pending_step or step):
            self._manager.wait_until_finished()
        with self._reporting_failures(step):
            self._pending_step = step
            self._manager.save(step, args=args, force=True)

    def restore(self, target, step: int | None = None):
        """Restores (state, record) at `step` (default: latest) into the structure of `target`.

        Args:
          target: a state (or abstract state of jax.ShapeDtypeStruct with shardings) with the
            same structure; it decides where the restored arrays live.
        """
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(_abstract, flax.serialization.to_state_dict(target))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
        )
        try:
            restored = self._manager.restore(step, args=args)
            state = flax.serialization.from_state_dict(target, restored.state)
        except CheckpointError:
            raise
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
            folder = os.path.join(self.directory, str(step))
            others = [s for s in self.all_steps() if s != step]
            hint = (
                f"Move {folder} out of the way to resume from step {others[-1]}"
                if others
                else "No other checkpoint exists; use a new --workdir to start over"
            )
            raise CheckpointError(
                f"Cannot restore the train state of step {step} from {folder} (damaged or "
                f"written by another model/config): {outputs.short_reason(e)}. {hint}."
            ) from e
        self._check_step(step, restored.state)
        return state, dict(restored.record)

    def _check_step(self, step: int, tree) -> None:
        """Raises CheckpointError if the folder of `step` holds the state of another step.

        Orbax takes the step from the folder's name, so a renamed folder would resume as
        the step it was renamed to, with another step's state and data order.
        """
        saved = tree.get("step") if isinstance(tree, Mapping) else None
        if saved is None:
            return
        shard = saved.addressable_data(0) if hasattr(saved, "addressable_data") else saved
        saved = int(np.asarray(shard))
        if saved != step:
            folder = os.path.join(self.directory, str(step))
            raise CheckpointError(
                f"{folder} holds the train state of step {saved}, not {step} (was it "
                f"renamed?): rename it back to {os.path.join(self.directory, str(saved))} "
                "to resume from it, or move it out of the way."
            )

    def wait(self) -> None:
        """Blocks until pending saves are on disk.

        Raises:
          CheckpointError: the pending save failed.
        """
        with self._reporting_failures(self._pending_step):
            self._manager.wait_until_finished()
        self._pending_step = None

    @contextlib.contextmanager
    def _reporting_failures(self, step):
        try:
            yield
        except Exception as e:
            self._pending_step = None
            intact = [s for s in self.all_steps() if s != step]
            kept = f"step {intact[-1]} is intact" if intact else "no earlier checkpoint exists"
            raise CheckpointError(
                f"Could not save the train state of step {step} to {self.directory}: "
                f"{outputs.short_reason(e)}. The previous checkpoint ({kept}) was not touched."
            ) from e

    def close(self) -> None:
        """Finishes a pending save (raising CheckpointError if it fails) and closes."""
        with self._reporting_failures(self._pending_step):
            self._manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def export_weights(path: str, params, batch_stats, metadata: Mapping[str, Any]) -> None:
    """Writes params and BN statistics as a msjax.weights folder (replacing an older one).

    Only process 0 writes (the arrays are replicated); the others return at once.

    Args:
      path: destination folder (e.g. WORKDIR/best).
      params, batch_stats: the model variables (gathered to the host).
      metadata: msjax.weights metadata (architecture, input normalisation) plus run facts.
    """
    if jax.process_index() != 0:
        return
    variables = {
        "params": jax.device_get(params),
        "batch_stats": jax.device_get(batch_stats),
    }
    weights.save(path, variables, metadata, overwrite=True)
