"""Shared command-line plumbing for the `python -m ahn_jax.<tool>` entry points.

`--config` is defined by the entry point being run (in its `__main__` block), never on import:
tools import each other's functions (the demo calls training), and a flag defined on import
would take the importing tool's place and default.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags


def define_config_flag(default: str | None = None) -> None:
    """`--config`: an ml_collections config file, overridable as `--config.a.b=value`."""
    config_flags.DEFINE_config_file("config", default, "config file", lock_config=False)


def define_kernels_flag(choices) -> None:
    """`--kernels`: the model's kernels (`ModelConfig.kernels`, ahn_jax/model/kernel_choice.py),
    one of `choices` (config.KERNELS, passed in: this module imports nothing of ours)."""
    help_text = "prefill's kernels: auto (Pallas on TPU, XLA elsewhere), xla or pallas"
    flags.DEFINE_enum("kernels", "auto", list(choices), help_text)


def config():
    """The parsed `--config` (None when not given and no default)."""
    return flags.FLAGS["config"].value


def default_dtype() -> str:
    """The parameter dtype of `--dtype` when not given: bfloat16 where JAX runs on a TPU or GPU
    (as the paper evaluated), float32 on a CPU (whose bfloat16 matmuls are slow and rounder)."""
    import jax  # not at import: the entry point configures the platform first

    return "bfloat16" if jax.default_backend() in ("tpu", "gpu") else "float32"
