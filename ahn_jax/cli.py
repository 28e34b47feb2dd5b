"""Shared command-line plumbing for the `python -m ahn_jax.<tool>` entry points."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags


def config_file_flag(default: str | None = None):
    """Define `--config` (an ml_collections config file, overridable as `--config.a.b=v`) once per
    process, so that several tools can be imported together (tests do); returns a getter."""
    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", default, "config file", lock_config=False)
    return lambda: flags.FLAGS["config"].value
