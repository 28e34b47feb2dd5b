"""Model settings: built from an HF Qwen2/Qwen2.5 `config.json` or from our ml_collections configs.

Every field is validated when the settings are made, with an error that names the field (or the
HF key), the value and what is allowed: a wrong config should fail at start-up, not deep in a jit.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SUPPORTED_MODEL_TYPES = ("qwen2",)
AHN_TYPES = ("gdn", "dn", "mamba2")


class ConfigError(ValueError):
    """A setting is missing, malformed or asks for a feature we do not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions and numerics of a Qwen2/Qwen2.5 decoder.

    `param_dtype` is how weights are stored, `dtype` the compute dtype of activations and matmul
    operands; norms, RoPE tables and softmax run in fp32 and logits are always returned in fp32.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat_policy: str = "none"
    ahn_type: str | None = None  # None: a plain Qwen2 model without AHN weights
    full_attention_layers: tuple[int, ...] = ()  # layers kept as full attention in every mode

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads ({self.num_heads}) must be a multiple of "
                f"model.num_kv_heads ({self.num_kv_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"model.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ConfigError(f"model.rope_theta must be > 0, got {self.rope_theta!r}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(
                    f"model.{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}"
                )
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(
                f"model.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"
            )
        if self.ahn_type is not None and self.ahn_type not in AHN_TYPES:
            raise ConfigError(f"ahn.type must be one of {AHN_TYPES}, got {self.ahn_type!r}")
        object.__setattr__(self, "full_attention_layers", tuple(self.full_attention_layers))
        bad = [i for i in self.full_attention_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(
                f"ahn.full_attention_layers has layer ids {bad} outside [0, {self.num_layers})"
            )

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def num_query_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> ModelConfig:
        """From our own config files (`config.model` of configs/*.py); unknown keys are errors."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise ConfigError(f"unknown model setting(s) {unknown}; allowed: {sorted(fields)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in settings
        )
        if missing:
            raise ConfigError(f"missing model setting(s) {missing}")
        return cls(**dict(settings))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rope_settings(hf: Mapping[str, Any]) -> float:
    """RoPE theta from transformers 4 keys (`rope_theta`, `rope_scaling`) or 5 keys."""
    theta = hf.get("rope_theta")
    for key in ("rope_parameters", "rope_scaling"):
        params = hf.get(key)
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise ConfigError(f"config.json key {key!r} must be an object, got {params!r}")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(
                f"config.json key '{key}.rope_type' = {rope_type!r} is not supported "
                "(only 'default' RoPE is implemented; YaRN and other scalings are not)"
            )
        theta = params.get("rope_theta", theta)
    if theta is None:
        theta = 10_000.0  # transformers' Qwen2Config default
    return float(theta)


def from_hf_config(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from the dict of an HF Qwen2/Qwen2.5 `config.json`."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"config.json key 'model_type' = {model_type!r} is not supported; "
            f"expected one of {SUPPORTED_MODEL_TYPES}"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config.json key 'hidden_act' = {act!r} is not supported (only 'silu')")
    if hf.get("use_sliding_window", False):
        raise ConfigError(
            "config.json key 'use_sliding_window' = true is not supported: Qwen2's own sliding "
            "window is not implemented (ahn_jax's sink+window modes are chosen at call time)"
        )
    for i, layer_type in enumerate(hf.get("layer_types") or []):
        if layer_type != "full_attention":
            raise ConfigError(
                f"config.json key 'layer_types[{i}]' = {layer_type!r} is not supported "
                "(only 'full_attention' layers)"
            )
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    for key in required:
        if key not in hf:
            raise ConfigError(f"config.json is missing the required key {key!r}")
    num_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    if head_dim * num_heads != hf["hidden_size"] and "head_dim" not in hf:
        raise ConfigError(
            f"config.json 'hidden_size' ({hf['hidden_size']}) is not divisible by "
            f"'num_attention_heads' ({num_heads})"
        )
    settings = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_settings(hf),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """A transformers-5 `config.json` dict describing the same model (for exports)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "use_sliding_window": False,
        "dtype": config.param_dtype,
    }


# What every Qwen2.5-Instruct size shares; a config file states only what differs.
QWEN25_DEFAULTS = {
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "max_position_embeddings": 32768,
    "param_dtype": "bfloat16",
    "dtype": "bfloat16",
    "remat_policy": "full",
}


# The reference's random-window candidates (ahn_spec §3; ahn_jax/windows.py samples from them).
WINDOW_CHOICES = tuple(2**i for i in range(5, 14))  # W + S: 32 .. 8192
SINK_CHOICES = (0, 32, 64, 128, 512, 2048, 4096)

# The paper's recipe (ahn_spec §3); a config file overrides what differs.
TRAIN_DEFAULTS = {
    # "distill": AHN weights learn from the frozen base (the paper); "pretrain": every base weight
    # learns next-token prediction under full attention (the miniature base of the demo)
    "objective": "distill",
    "steps": 740,
    "batch_size": 128,  # global, in sequences
    "micro_batches": 1,  # gradient accumulation
    "seq_len": 24576,
    "length_buckets": (),  # pad each batch to the smallest bucket (default: seq_len only)
    "learning_rate": 1e-4,
    "warmup_fraction": 0.1,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "loss": "kl",
    "window_sampling": "random",
    "window": 256,  # "fixed" / "linear" sampling
    "sinks": 0,
    "window_choices": WINDOW_CHOICES,
    "sink_choices": SINK_CHOICES,
    "seq_tile": 512,  # loss tiles: the [T, V] logits are never formed
    "vocab_tile": 8192,
    "seed": 0,
    "mesh": "",  # e.g. "data=2,fsdp=4,tensor=1" (product = device count); "" = one device
    "base_checkpoint": "",  # HF dir or ahn_jax checkpoint; "" = the config's random init
    "output_dir": "runs/ahn",
    "checkpoint_every": 50,
    "keep_checkpoints": 3,
    "log_every": 1,
    # several processes (TPU pod hosts, GPU nodes): jax.distributed.initialize(); the address, count
    # and id are found on TPU pods and SLURM when left empty / -1
    "distributed": False,
    "coordinator_address": "",
    "num_processes": -1,
    "process_id": -1,
    "tensorboard": True,  # event files in <output_dir>/tensorboard
    "profile_steps": (),  # (first, last): a JAX profiler trace in <output_dir>/profile
    "peak_flops_per_device": 0.0,  # for the MFU estimate; 0 = from the device kind when known
}
DATA_DEFAULTS = {
    "format": "chat",
    "paths": (),
    "tokenizer": "checkpoint",  # the base checkpoint's tokenizer.json, or "bytes"
    "filter_len": 288,
    "cutoff_len": 24576,
    # key/recall pairs mixed into text windows (ahn_jax/recall.py), e.g. {"span": 16, "pairs": 1,
    # "min_gap": 64, "max_gap": 192}; empty = none
    "recall": {},
}


def make_config(model: Mapping[str, Any], *, ahn_type: str = "gdn", **sections: Any):
    """The ConfigDict of a config file: model settings (validated now), the AHN section, the
    training and data sections (the paper's recipe, updated by `train=` / `data=`) and any other
    sections given."""
    from ml_collections import ConfigDict

    sections = {name: dict(section) for name, section in sections.items()}
    sections["train"] = {**TRAIN_DEFAULTS, **sections.get("train", {})}
    sections["data"] = {**DATA_DEFAULTS, **sections.get("data", {})}
    config = ConfigDict(
        {"model": dict(model), "ahn": {"type": ahn_type, "full_attention_layers": ()}, **sections}
    )
    validate_config(config)
    return config


def validate_config(config) -> ModelConfig:
    """Check a ConfigDict's sections; returns its ModelConfig (AHN settings included).

    Errors name the bad field."""
    if "model" not in config:
        raise ConfigError("config has no 'model' section")
    settings = config.model.to_dict()
    if "ahn" in config:
        unknown = sorted(set(config.ahn.keys()) - {"type", "full_attention_layers"})
        if unknown:
            raise ConfigError(
                f"unknown ahn setting(s) {unknown}; allowed: ['full_attention_layers', 'type']"
            )
        settings["ahn_type"] = config.ahn.type
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
