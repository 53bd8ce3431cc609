"""Stopping a training run cleanly: SIGTERM (preemption) and SIGINT (Ctrl-C).

Cluster schedulers (SLURM, Kubernetes, Borg) send SIGTERM some seconds before they kill a
job; a user presses Ctrl-C. Either way the run should stop at the end of the current step,
save a checkpoint there and say so in one line, so that the same command continues it.
`StopSignals` records the signal instead of dying on it; the training loop asks
`requested()` before the first step and after every step. A second Ctrl-C means "now": the
process exits at once with status 130 (checkpoint and export saves are atomic, so nothing
saved before is damaged).

The training commands install it first thing, before they parse flags or import JAX: a
Ctrl-C during start-up is then never lost (Python's default KeyboardInterrupt can be
swallowed by a callback, e.g. JAX's garbage-collection hook, and the run would go on to
report success). An inner `StopSignals` (the one `train_and_evaluate` opens) shares the
outer one's record.

With several processes, only some may receive the signal; every process must stop at the
same step (checkpoint saves are collective), so the flag is OR-ed over processes at every
step (one tiny all-gather; a single process only reads its own flag).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# Signals that stop a run cleanly, in the order `requested` reports them.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
SIGNAL_TEXT = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}
EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 130}

# What the first Ctrl-C says, by phase of the run (set by the training loop).
STARTING = "stopping before training starts"
TRAINING = "stopping after this step and saving it"
FINISHING = "finishing the final evaluation and export first"

_active: StopSignals | None = None  # the installed instance; inner ones share it


class StopSignals:
    """Context manager turning SIGTERM and SIGINT into a flag the training loop polls.

    The previous handlers are restored on exit. Outside the main thread (where Python cannot
    install signal handlers) it does nothing and `requested()` stays None. Entered while
    another instance is installed, it returns that one (so a signal received earlier counts).

    Attributes:
      phase: what the first Ctrl-C will do (STARTING, TRAINING or FINISHING).
    """

    def __init__(self, signums=SIGNALS):
        self.signums = tuple(signums)
        self.phase = STARTING
        self._received: list[int] = []
        self._previous: dict[int, object] = {}
        self._shared: StopSignals | None = None

    def __enter__(self) -> StopSignals:
        global _active
        if _active is not None:
            self._shared = _active
            return _active
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
            _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if self._shared is not None:
            self._shared = None
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if _active is self:
            _active = None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self._received:
            print("\nSecond Ctrl-C: exiting now.", file=sys.stderr, flush=True)
            os._exit(EXIT_STATUS[signal.SIGINT])
        if signum not in self._received:
            self._received.append(signum)
        if signum == signal.SIGINT:
            print(f"\nCtrl-C: {self.phase} (Ctrl-C again to exit now).", file=sys.stderr,
                  flush=True)  # fmt: skip

    def received(self) -> int | None:
        """The first stop signal this process received, or None (no collective)."""
        return self._received[0] if self._received else None

    def requested(self) -> int | None:
        """The first stop signal any process received, or None (a collective with several)."""
        import jax

        if jax.process_count() == 1:
            return self.received()
        import numpy as np
        from jax.experimental import multihost_utils

        mine = np.int32(self.received() or 0)
        received = multihost_utils.process_allgather(mine)
        received = [int(s) for s in np.ravel(received) if s]
        return min(received, key=self.signums.index) if received else None
