"""Stopping a training run on SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop, a preempted VM)
without losing its steps: the step in flight finishes, a checkpoint of it is saved, and the run
ends with `InterruptedTrainingError`; the same command resumes from there.

The signal is acknowledged at once on stderr, even while the main thread waits minutes in a
compile or a step (where Python runs no signal handler): the C-level handler writes the signal's
number to a wakeup pipe (`signal.set_wakeup_fd`), which a watcher thread reads. A second signal
stops the process at once (exit 128 + signal), without the step in flight's checkpoint; the saved
ones are whole, as Orbax commits a checkpoint only once written. With several processes the
request is agreed on after every step (one small all-gather), so all of them save the same step
even when only one received the signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from ahn_jax import cli

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptedTrainingError(RuntimeError):
    """The run stopped on a signal after saving a checkpoint of `step`."""

    def __init__(self, step: int, signum: int):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; its checkpoint is saved, and the same command "
            f"resumes from it (with --config.train.steps={step} added it exports that step's "
            "weights without training on)"
        )
        self.step, self.signum = step, signum


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StopOnSignal:
    """A context in which SIGINT and SIGTERM only ask the run to stop (`requested`), `say`ing so
    at once; a second one ends the process at once. Outside the main thread (where signals cannot
    be caught) the context does nothing."""

    def __init__(self, say: Callable[[str], None] = _to_stderr):
        self.signum = None
        self._say = say
        self._previous, self._previous_wakeup, self._pipe, self._watcher = {}, None, None, None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        try:  # the handlers first: a signal from then on is a request, never a KeyboardInterrupt
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._ask)
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)  # set_wakeup_fd's rule: the C handler never waits
            self._previous_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            self._watcher = threading.Thread(
                target=self._watch, args=(self._pipe[0],), name="stop-on-signal", daemon=True
            )
            self._watcher.start()
        except BaseException:  # nothing left armed or open
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        # the pipe first, then the handlers: a signal in between reaches `_ask` alone (recorded,
        # not acknowledged), never a handler that raises in here
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            read, write = self._pipe
            os.close(write)  # the watcher reads the end of the pipe, closes its end and returns
            if self._watcher is None:
                os.close(read)
            self._pipe, self._watcher = None, None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _ask(self, signum, frame) -> None:
        """The Python-level handler (main thread, once it runs Python again): the request."""
        self.signum = self.signum or signum

    def _watch(self, read: int) -> None:
        """The watcher thread: every caught signal's number, as the C-level handler wrote it."""
        seen = 0
        while data := os.read(read, 64):
            for signum in data:
                if signum not in SIGNALS:  # another handler's signal, delivered to the pipe too
                    continue
                seen += 1
                name = signal.Signals(signum).name
                if seen == 1:
                    self._say(f"\n{name}: the step in flight finishes and is saved, then the run "
                              f"stops (the same command resumes); {name} again stops at once, "
                              "without that checkpoint")  # fmt: skip
                else:
                    self._say(f"\n{name} again: stopped at once; the same command resumes from "
                              "the last checkpoint saved")  # fmt: skip
                    cli.exit_now(128 + signum)
        os.close(read)

    def requested(self) -> int | None:
        """The signal that asked to stop (on any process), or None."""
        if jax.process_count() == 1:
            return self.signum
        asked = multihost_utils.process_allgather(np.int32(self.signum or 0))
        return int(np.max(asked)) or None
