"""Typed, validated settings, the lowest layer of ahn_jax (it imports nothing else of ours)."""

from ahn_jax.config.files import check_objective, load_config_file, make_config, validate_config
from ahn_jax.config.model import (
    AHN_TYPES,
    DTYPES,
    KERNELS,
    MODES,
    QWEN25_DEFAULTS,
    REMAT_POLICIES,
    ConfigError,
    ModelConfig,
    check_vocabulary,
)
from ahn_jax.config.run import (
    DATA_DEFAULTS,
    DATA_FORMATS,
    REFERENCE_MAX_GRAD_NORM,
    SINK_CHOICES,
    TRAIN_DEFAULTS,
    WINDOW_CHOICES,
    DataConfig,
    TrainConfig,
    run_configs,
)

__all__ = [
    "AHN_TYPES",
    "check_objective",
    "DATA_DEFAULTS",
    "DATA_FORMATS",
    "DTYPES",
    "KERNELS",
    "MODES",
    "QWEN25_DEFAULTS",
    "REFERENCE_MAX_GRAD_NORM",
    "REMAT_POLICIES",
    "SINK_CHOICES",
    "TRAIN_DEFAULTS",
    "WINDOW_CHOICES",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "check_vocabulary",
    "load_config_file",
    "make_config",
    "run_configs",
    "validate_config",
]
