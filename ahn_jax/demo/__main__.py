"""`python -m ahn_jax.demo`: The miniature reproduction (docs/results.md); the steps are
ahn_jax/demo/pipeline.py's."""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

from ahn_jax import cli, xla_cpu
from ahn_jax.config import AHN_TYPES, ConfigError
from ahn_jax.demo import pipeline
from ahn_jax.training.interrupt import InterruptedTrainingError

FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag("configs/demo_gdn.py")
    flags.DEFINE_list("types", ["gdn"], f"AHN types to distil and compare ({', '.join(AHN_TYPES)})")
    flags.DEFINE_bool("quick", False, "a few-minute run that shows the machinery (CI smoke test)")
    flags.DEFINE_string("base", None, "pretrained base directory (default: the packaged one, "
                        "ahn_jax/assets/demo_base, else runs/demo_base/model, else one pretrained "
                        "here), or 'pretrain' to pretrain one here whatever exists")  # fmt: skip
    flags.DEFINE_string("out", None, "where the AHN runs, the table and the plot go (default: "
                        "runs/demo, --quick runs/demo_quick: a full run never resumes a quick "
                        "one's training)")  # fmt: skip
    flags.DEFINE_integer("windows_per_play", 48, "evaluation windows per held-out play "
                         "(--quick: 4)", lower_bound=1)  # fmt: skip
    flags.DEFINE_integer("seed", 1234, "evaluation windows' seed")
    flags.DEFINE_bool("ablations", False, "also the paper's ablations in miniature "
                      "(ahn_jax/demo/ablations.py); all three types by default")  # fmt: skip


def main(argv) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    types = FLAGS.types
    if FLAGS.ablations and not FLAGS["types"].present:  # its figure compares the three types
        types = list(AHN_TYPES)
    unknown = sorted(set(types) - set(AHN_TYPES))
    if unknown:
        raise app.UsageError(f"--types: unknown {unknown}; use {', '.join(AHN_TYPES)}")
    try:
        _run(types)
    except InterruptedTrainingError as e:  # training saved its step: the same command resumes
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("interrupted; the same command resumes (finished training is kept)", file=sys.stderr)
        cli.exit_now(130)


def _run(types: list[str]) -> None:
    pipeline.run(
        cli.config(),
        types=types,
        quick=FLAGS.quick,
        base=FLAGS.base,
        out=Path(FLAGS.out or ("runs/demo_quick" if FLAGS.quick else "runs/demo")),
        windows_per_play=FLAGS.windows_per_play,
        seed=FLAGS.seed,
        command=" ".join(sys.argv),
        ablations=FLAGS.ablations,
    )


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    define_flags()
    # a bad setting (--config.train.steps=0, a --base without a model) is one error line
    cli.run(main, (ConfigError, FileNotFoundError))
