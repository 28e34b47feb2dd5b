"""ahn_jax: Artificial Hippocampus Networks for Qwen2.5 in JAX/Flax NNX."""

from ahn_jax.config import ConfigError, ModelConfig, from_hf_config
from ahn_jax.loading import from_pretrained
from ahn_jax.model import Qwen2Model, init_model

__all__ = [
    "ConfigError",
    "ModelConfig",
    "Qwen2Model",
    "from_hf_config",
    "from_pretrained",
    "init_model",
]
