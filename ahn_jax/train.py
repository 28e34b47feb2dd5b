"""`python -m ahn_jax.train --config=configs/<name>.py`: self-distillation of the AHN weights (or,
with `train.objective = "pretrain"`, a base's pretraining); the loop is ahn_jax/training/loop.py."""

from __future__ import annotations

import signal
import sys

from absl import app

from ahn_jax import cli, xla_cpu
from ahn_jax.checkpoints.hf_naming import CheckpointMismatchError
from ahn_jax.checkpoints.safetensors_io import CheckpointFormatError
from ahn_jax.config import ConfigError, field_help, run_configs, validate_config


def main(argv) -> None:
    del argv
    config = cli.config()
    if config is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    # the config's errors (a missing base or data above all) come before the training stack is
    # imported: orbax, grain and TensorBoard's writer take seconds to import
    validate_config(config)
    run_configs(config)
    from ahn_jax.config.windows import fixed_window
    from ahn_jax.training.checkpointing import export_attention
    from ahn_jax.training.interrupt import InterruptedTrainingError
    from ahn_jax.training.loop import TrainingError, train

    try:
        run = train(config)
    except TrainingError as e:
        cli.fail(e)
    except InterruptedTrainingError as e:
        print(e, file=sys.stderr)
        # another signal during the interpreter's teardown (its atexit callbacks: the
        # distributed runtime's shutdown) ends the process at once instead of raising there
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, frame: cli.exit_now(128 + number))
        sys.exit(128 + e.signum)  # the shell's convention for a process a signal ended
    what = cli.EXPORT_NAMES[run.train.objective]
    steps = f"{run.train.steps} step{'' if run.train.steps == 1 else 's'}"
    if run.start_step > run.train.steps:  # nothing ran: the export is the checkpoint's
        steps = f"nothing to run (train.steps = {run.train.steps}; checkpoint of step "
        steps += f"{run.start_step})"
    print(f"done: {steps}; weights in {run.output_dir / what}")
    if run.train.objective == "distill" and fixed_window(run.train) is None:
        window, sinks = export_attention(run.train)
        print(
            f"its config.json records inference window {window}, sinks {sinks} (the evaluation "
            f"defaults: training drew {run.train.window_sampling} windows); generate and "
            "evaluate take others with --window and --sinks"
        )
    if run.skips.count:
        records = "record" if run.skips.count == 1 else "records"
        print(f"skipped {run.skips.count} bad {records} (see the log for file:line)")


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    __doc__ += "\n" + field_help.describe()  # absl's --help prints the main module's docstring
    cli.define_config_flag()
    # a base checkpoint that is missing, unreadable or does not fit the config: one error line
    cli.run(main, (ConfigError, FileNotFoundError, CheckpointFormatError, CheckpointMismatchError))
