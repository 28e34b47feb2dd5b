"""Stopping a training run on SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop, a preempted VM)
without losing its steps: the step in flight finishes, a checkpoint of it is saved, and the run
ends with `InterruptedTrainingError`; the same command resumes from there.

A second signal while the checkpoint is written stops at once (the handlers are the defaults
again by then). With several processes the request is agreed on after every step (one small
all-gather), so all of them save the same step even when only one received the signal.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptedTrainingError(RuntimeError):
    """The run stopped on a signal after saving a checkpoint of `step`."""

    def __init__(self, step: int, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; its checkpoint is saved, and the "
                         "same command resumes from it")  # fmt: skip
        self.step, self.signum = step, signum


class StopOnSignal:
    """A context in which SIGINT and SIGTERM only ask the run to stop (`requested`)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        try:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._ask)
        except ValueError:  # not the main thread: signals stay as they were
            self._restore()
        return self

    def __exit__(self, *exc):
        self._restore()

    def _ask(self, signum, frame) -> None:
        self.signum = signum
        self._restore()  # a second signal acts at once

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def requested(self) -> int | None:
        """The signal that asked to stop (on any process), or None."""
        if jax.process_count() == 1:
            return self.signum
        asked = multihost_utils.process_allgather(np.int32(self.signum or 0))
        return int(np.max(asked)) or None
