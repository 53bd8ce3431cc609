"""Preemption: SIGTERM asks a training run to save its state and stop at the next step.

Cluster schedulers (SLURM, Kubernetes, Borg) send SIGTERM some seconds before they kill a
job. `PreemptionSignal` records the signal instead of dying on it; the training loop asks
`requested()` after every step and, when it says yes, saves a checkpoint at that step and
returns normally (exit 0). Rerunning the same command continues from that checkpoint.

With several processes, only some may receive the signal; every process must stop at the
same step (checkpoint saves are collective), so the flag is OR-ed over processes at every
step (one tiny all-gather; a single process only reads its own flag).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class PreemptionSignal:
    """Context manager that turns SIGTERM into a flag the training loop polls.

    The previous handler is restored on exit. Outside the main thread (where Python cannot
    install signal handlers) it does nothing and `requested()` stays False.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self._received = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> PreemptionSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        self._received = True

    def requested(self) -> bool:
        """True once any process has received the signal (a collective with several)."""
        if jax.process_count() == 1:
            return self._received
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self._received))
        return bool(np.any(flags))
