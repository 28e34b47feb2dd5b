"""Model settings: the typed, validated `ModelConfig` and the values its fields allow.

Every field is validated when the settings are made, with an error that names the field, the value
and what is allowed: a wrong config should fail at start-up, not deep in a jit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
AHN_TYPES = ("gdn", "dn", "mamba2")
# "full": causal attention (the teacher, plain Qwen2); "swa": S sinks + a window of W keys; "ahn":
# swa plus the memory of every evicted token (docs/method.md §Method)
MODES = ("full", "swa", "ahn")


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
