"""ahn_jax: Artificial Hippocampus Networks for Qwen2.5 in JAX/Flax NNX."""

from ahn_jax import xla_cpu
from ahn_jax.checkpoints.hf_config import from_hf_config
from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import ConfigError, ModelConfig
from ahn_jax.model.transformer import AhnModel, init_model

# XLA reads XLA_FLAGS when JAX makes its first backend, not at import (ahn_jax/xla_cpu.py)
xla_cpu.avoid_known_crashes()

__all__ = [
    "ConfigError",
    "ModelConfig",
    "AhnModel",
    "from_hf_config",
    "from_pretrained",
    "init_model",
]
