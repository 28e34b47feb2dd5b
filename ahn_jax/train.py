"""`python -m ahn_jax.train --config=configs/<name>.py`: self-distillation of the AHN weights (or,
with `train.objective = "pretrain"`, a base's pretraining); the loop is ahn_jax/training/loop.py."""

from __future__ import annotations

import sys

from absl import app, flags, logging

from ahn_jax import cli, xla_cpu
from ahn_jax.config import ConfigError, run_configs, validate_config


def _fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def main(argv) -> None:
    del argv
    config = cli.config()
    if config is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        # the config's errors (a missing base or data above all) come before the training stack
        # is imported: orbax, grain and TensorBoard's writer take seconds to import
        validate_config(config)
        run_configs(config)
    except (ConfigError, FileNotFoundError) as e:
        _fail(e)
    from ahn_jax.training.loop import TrainingError, train

    try:
        run = train(config)
    except (ConfigError, FileNotFoundError, TrainingError) as e:
        _fail(e)
    what = "model" if run.train.objective == "pretrain" else "ahn"
    print(f"done: {run.train.steps} steps; weights in {run.output_dir / what}")
    if run.skips.count:
        print(f"skipped {run.skips.count} bad records (see the log for file:line)")


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    cli.define_config_flag()
    app.run(main)
