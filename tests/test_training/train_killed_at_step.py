"""`python -m ahn_jax.train`, killed by SIGKILL (or the signal named by the environment's
KILL_SIGNAL, e.g. "SIGTERM") right after step N's metrics are written:

  python tests/test_training/train_killed_at_step.py N --config=... [--config.*=...]

A crash at a known step, whatever the machine's speed (polling from outside raced with fast steps).
"""

import os
import signal
import sys

from absl import app

from ahn_jax import cli, train
from ahn_jax.training.metrics_log import MetricsLog

KILL_STEP = int(sys.argv.pop(1))
KILL_SIGNAL = signal.Signals[os.environ.get("KILL_SIGNAL", "SIGKILL")]
_write = MetricsLog.write


def write_then_die(self, record):
    _write(self, record)
    if record["step"] == KILL_STEP:
        os.kill(os.getpid(), KILL_SIGNAL)


if __name__ == "__main__":
    MetricsLog.write = write_then_die
    cli.define_config_flag()
    app.run(train.main)
