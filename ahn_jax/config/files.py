"""Config files: Python files whose `get_config()` returns an ml_collections ConfigDict with the
sections `model`, `ahn`, `train`, `data` (and any others a tool reads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ahn_jax.config.model import ConfigError, ModelConfig
from ahn_jax.config.run import DATA_DEFAULTS, TRAIN_DEFAULTS, DataConfig, TrainConfig

# The model section's optional fields with their defaults (the AHN's are the `ahn` section's;
# rope_scaling, None or a mapping, is written only where a config sets it)
MODEL_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(ModelConfig)
    if field.default is not dataclasses.MISSING
    and field.name not in ("ahn_type", "full_attention_layers", "rope_scaling")
}


def make_config(model: Mapping[str, Any], *, ahn_type: str = "gdn", **sections: Any):
    """The ConfigDict of a config file: model settings (validated now), the AHN section, the
    training and data sections (the paper's recipe, updated by `train=` / `data=`) and any other
    sections given."""
    from ml_collections import ConfigDict

    sections = {name: dict(section) for name, section in sections.items()}
    model = {**MODEL_DEFAULTS, **model}  # every field present: overridable from the command line
    sections["train"] = {**TRAIN_DEFAULTS, **sections.get("train", {})}
    sections["data"] = {**DATA_DEFAULTS, **sections.get("data", {})}
    config = ConfigDict(
        {"model": dict(model), "ahn": {"type": ahn_type, "full_attention_layers": ()}, **sections}
    )
    validate_config(config)
    return config


def validate_config(config) -> ModelConfig:
    """Check a ConfigDict's sections; returns its ModelConfig (AHN settings included).

    The `train` and `data` sections, where present, are checked field by field too (a run checks
    them against each other and the file system: `run_configs`). Errors name the bad field."""
    if "model" not in config:
        raise ConfigError("config has no 'model' section")
    if "train" in config:
        TrainConfig.from_dict(config.train.to_dict())
    if "data" in config:
        DataConfig.from_dict(config.data.to_dict())
    settings = config.model.to_dict()
    if "ahn" in config:
        unknown = sorted(set(config.ahn.keys()) - {"type", "full_attention_layers"})
        if unknown:
            raise ConfigError(
                f"unknown ahn setting(s) {unknown}; allowed: ['full_attention_layers', 'type']"
            )
        # the command line gives strings: --config.ahn.type=None (or none, or empty) means None
        ahn_type = config.ahn.type
        settings["ahn_type"] = None if str(ahn_type).lower() in ("none", "") else ahn_type
        settings["full_attention_layers"] = tuple(config.ahn.get("full_attention_layers", ()))
    return ModelConfig.from_dict(settings)


def load_config_file(path: str | Path):
    """Import a config file and return its `get_config()` ConfigDict, validated."""
    import importlib.util

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_ahn_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    config = module.get_config()
    validate_config(config)
    return config


def check_objective(model: ModelConfig, train: TrainConfig) -> None:
    """What the training objective needs of the model, for `train` and `compile_check` alike:
    distillation an AHN type; pretraining none, and the base's weights kept in float32."""
    pretrain = train.objective == "pretrain"
    if pretrain and model.ahn_type is not None:
        raise ConfigError("train.objective = 'pretrain' trains the base: set ahn.type = None")
    if not pretrain and model.ahn_type is None:
        raise ConfigError("ahn.type must be set to train AHN weights")
    if pretrain and model.param_dtype != "float32":
        # the trained weights are the optimizer's master copy, and Adam's moments take their
        # dtype: in bf16 an update below a weight's precision (lr 2e-3 on a norm scale of 1) is lost
        raise ConfigError(
            f"train.objective = 'pretrain' trains the base's weights, which must be kept in "
            f"float32 (model.param_dtype = {model.param_dtype!r}); model.dtype = 'bfloat16' "
            "still computes in bf16"
        )
