"""Signals during training (training/interrupt.py): acknowledged at once while a step runs, a
second one stops at once. The run-level behaviour (the step in flight saved, exact resume) is
test_train.py's SIGTERM test."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "signal_during_a_step.py"
ROOT = Path(__file__).parents[2]


def _run(count: int, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(count), name], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_is_acknowledged_while_the_step_runs_and_a_second_stops_at_once(name):
    once = _run(1, name)
    assert once.returncode == 0, once.stderr[-2000:]
    assert once.stdout.splitlines() == [
        f"{name}: the step in flight finishes and is saved, then the run stops (the same command "
        f"resumes); {name} again stops at once, without that checkpoint",
        f"requested: {name}",
    ]
    twice = _run(2, name)
    assert twice.returncode == 128 + (2 if name == "SIGINT" else 15), twice.stderr[-2000:]
    assert twice.stdout.splitlines()[1:] == [
        f"{name} again: stopped at once; the same command resumes from the last checkpoint saved"
    ]


def test_entered_again_and_again_it_leaves_no_pipe_thread_or_handler_behind():
    """The demo trains three models in one process: each run's context must close its pipe, end
    its watcher and put the handlers and the wakeup fd back."""
    code = (
        "import os, signal, threading\n"
        "from ahn_jax.training.interrupt import StopOnSignal\n"
        "before = (sorted(os.listdir('/proc/self/fd')), signal.getsignal(signal.SIGINT))\n"
        "for _ in range(3):\n"
        "    with StopOnSignal():\n"
        "        pass\n"
        "threading.Event().wait(0.5)\n"
        "after = (sorted(os.listdir('/proc/self/fd')), signal.getsignal(signal.SIGINT))\n"
        "print(before == after, signal.set_wakeup_fd(-1),\n"
        "      [t.name for t in threading.enumerate() if t.name == 'stop-on-signal'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "True -1 []"
