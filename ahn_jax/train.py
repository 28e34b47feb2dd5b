"""`python -m ahn_jax.train --config=configs/<name>.py`: self-distillation of the AHN weights (or,
with `train.objective = "pretrain"`, a base's pretraining); the loop is ahn_jax/training/loop.py."""

from __future__ import annotations

import sys

from absl import app, flags, logging

from ahn_jax import cli
from ahn_jax.config import ConfigError
from ahn_jax.training.loop import TrainingError, train


def main(argv) -> None:
    del argv
    if cli.config() is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        run = train(cli.config())
    except (ConfigError, FileNotFoundError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    what = "model" if run.train.objective == "pretrain" else "ahn"
    print(f"done: {run.train.steps} steps; weights in {run.output_dir / what}")
    if run.skips.count:
        print(f"skipped {run.skips.count} bad records (see the log for file:line)")


if __name__ == "__main__":
    cli.define_config_flag()
    app.run(main)
