"""Where a run's numbers go: WORKDIR/metrics.jsonl, TensorBoard event files, the console.

`metrics.jsonl` holds one JSON object per log step (`step`, `loss`, `loss_source`, ...,
`lr`) and per evaluation (`step`, `miou`, ...): easy to read back with pandas or `jq`.
Only process 0 writes; the other hosts get a writer that does nothing. A resumed run drops
the records after its checkpoint's step (written by the run that stopped before saving
them): the steps are computed again, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np


class MetricWriter:
    """Appends scalars to metrics.jsonl and (optionally) TensorBoard.

    Args:
      workdir: the run's folder.
      tensorboard: also write TensorBoard event files under WORKDIR/tensorboard.
      start_step: the step the run starts from; records of later steps are dropped.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, start_step: int = 0):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            _drop_records_after(path, start_step)
        self._jsonl = open(path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes one record; non-finite values are written as null in JSON."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in values.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
            if self._tb is not None:
                self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def images(self, step: int, name: str, images: np.ndarray) -> None:
        """uint8 [N, H, W, 3] images to TensorBoard."""
        if self.enabled and self._tb is not None:
            self._tb.add_images(name, np.asarray(images), step, dataformats="NHWC")

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites a metrics.jsonl without the records of steps after `step` (atomically)."""
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) == len(lines):
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
