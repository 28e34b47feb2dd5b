"""`python -m ahn_jax.compile_check`: Compile the train step, the decode step or a chunk of prefill
for a TPU topology from a CPU host (ahn_jax/training/compile_check.py).

  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5p-8 \\
      [--kernels=pallas|xla] [--mesh=fsdp=4] [--seq_len=24576] [--batch_size=4] [--json]
  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5e-8 \\
      --step=decode --batch_size=16 [--window=32640] [--sinks=128]
  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5e-1 \\
      --step=prefill --batch_size=4 [--chunk_size=1024] [--kernels=pallas|xla]
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from ahn_jax import cli, xla_cpu
from ahn_jax.config import KERNELS, ConfigError
from ahn_jax.training import compile_check, tpu_topologies

FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag()
    aliases = sorted(tpu_topologies.TOPOLOGY_ALIASES)
    flags.DEFINE_string("topology", "v5p-8", f"TPU topology, e.g. {aliases}")
    flags.DEFINE_string("mesh", "", "mesh axes, e.g. 'fsdp=4' (default: the config's train.mesh, "
                        "else fsdp over every chip)")  # fmt: skip
    flags.DEFINE_integer(
        "seq_len", None, "tokens per sequence (default: train.seq_len)", lower_bound=1
    )
    flags.DEFINE_integer(
        "batch_size",
        None,
        "global batch (default: train.batch_size; decode, prefill: 1)",
        lower_bound=1,
    )
    flags.DEFINE_enum("step", "train", list(STEPS), "which step to compile")
    flags.DEFINE_enum("kernels", None, list(KERNELS),
                      "the kernels of the forward (train) or of prefill's recurrences "
                      "(default: the config's model.kernels; 'auto' = Pallas on TPU)")  # fmt: skip
    flags.DEFINE_integer("window", 32640, "decode, prefill: the cache's window W", lower_bound=1)
    flags.DEFINE_integer("sinks", 128, "decode, prefill: the cache's sinks S", lower_bound=0)
    flags.DEFINE_integer(
        "max_length",
        None,
        "decode, prefill: positions of layers kept as full attention",
        lower_bound=1,
    )
    flags.DEFINE_integer("chunk_size", 1024, "prefill: tokens per row in one chunk (evaluate's "
                         "--chunk; generate's 1024)", lower_bound=1)  # fmt: skip
    flags.DEFINE_bool("json", False, "print one JSON object")


# the flags each step reads: given to another step they were ignored
STEPS = {
    "train": ("seq_len", "kernels"),
    "decode": ("window", "sinks", "max_length"),
    "prefill": ("window", "sinks", "max_length", "chunk_size", "kernels"),
}


def _check_step_flags(step: str) -> None:
    for name in sorted({name for names in STEPS.values() for name in names} - set(STEPS[step])):
        if FLAGS[name].present:
            steps = " or ".join(f"--step={s}" for s, names in STEPS.items() if name in names)
            raise app.UsageError(f"--{name} applies to {steps} only")


def main(argv) -> None:
    del argv
    if cli.config() is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    _check_step_flags(FLAGS.step)
    cache = (FLAGS.window, FLAGS.sinks, FLAGS.max_length)
    if FLAGS.step == "decode":
        report = compile_check.check_decode(
            cli.config(), FLAGS.topology, FLAGS.mesh, FLAGS.batch_size or 1, *cache
        )
    elif FLAGS.step == "prefill":
        report = compile_check.check_prefill(
            cli.config(), FLAGS.topology, FLAGS.mesh, FLAGS.batch_size or 1, *cache,
            FLAGS.chunk_size, FLAGS.kernels,
        )  # fmt: skip
    else:
        report = compile_check.check(
            cli.config(), FLAGS.topology, FLAGS.mesh, FLAGS.seq_len, FLAGS.batch_size,
            FLAGS.kernels,
        )  # fmt: skip
    print(json.dumps(report) if FLAGS.json else compile_check.format_report(report))
    sys.exit(0 if report["fits"] else 1)


if __name__ == "__main__":
    xla_cpu.configure_platform(compiles_for_tpu=True)  # before JAX makes a backend
    define_flags()
    # a user's error (a bad flag value, a config the step cannot be built for) exits 2 with one
    # line; 1 is kept for "does not fit"
    cli.run(main, (ConfigError,))
