"""A jitted computation that sends this process N signals from inside itself (a host callback)
and waits there until StopOnSignal has said something for each: the main thread meanwhile waits
in XLA, where Python runs no signal handler. Prints what was said, one message per line, then
the request the run would read.

  python tests/test_training/signal_during_a_step.py N SIGINT|SIGTERM
"""

import os
import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

from ahn_jax.training.interrupt import StopOnSignal

COUNT, SIGNAL = int(sys.argv[1]), signal.Signals[sys.argv[2]]
said, heard = [], threading.Event()


def say(message: str) -> None:
    said.append(message.strip())
    print(message.strip(), flush=True)
    heard.set()


def signal_and_wait(x):
    for _ in range(COUNT):
        heard.clear()
        os.kill(os.getpid(), SIGNAL)
        if not heard.wait(timeout=30):
            print("nothing said while the step ran", flush=True)
            break
    return x


@jax.jit
def step(x):
    return jax.pure_callback(signal_and_wait, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1


with StopOnSignal(say) as stop:
    np.asarray(step(jnp.zeros(3)))  # the main thread waits in XLA for the callback's result
    print(f"requested: {signal.Signals(stop.requested()).name}", flush=True)
