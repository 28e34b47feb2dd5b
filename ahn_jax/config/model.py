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
# which kernels the parallel forward and prefill run (ahn_jax/model/kernel_choice.py): "auto" =
# Pallas on TPU, XLA elsewhere; "pallas" off TPU runs the kernels in interpret mode
KERNELS = ("auto", "xla", "pallas")


class ConfigError(ValueError):
    """A setting is missing, malformed or asks for a feature we do not implement."""


def check_vocabulary(tokens: int, vocab_size: int, source: str) -> None:
    """A tokenizer of `tokens` ids must fit the model's embedding table: JAX's gathers clamp or
    fill an out-of-range id without an error, so its tokens would silently read other rows.
    `source` names where the tokenizer came from, for the message."""
    if tokens > vocab_size:
        raise ConfigError(
            f"the tokenizer of {source} has {tokens:,} tokens but the model's vocabulary has "
            f"{vocab_size:,} (model.vocab_size): its ids would run past the embedding table. "
            "Use the model's own tokenizer"
        )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling, the keys of transformers' `rope_parameters` for rope_type "yarn" (Qwen2.5
    enables it for 128k with factor 4 over 32,768 positions). Kept as read, not resolved: `None`
    means what transformers derives (attention_factor from factor, mscale and mscale_all_dim), so
    an export writes back the config it came from. The math is ahn_jax/model/layers.py's."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self):
        name = "model.rope_scaling"
        if not _number(self.factor) or self.factor < 1:
            raise ConfigError(f"{name}.factor must be a number >= 1, got {self.factor!r}")
        original = self.original_max_position_embeddings
        if not isinstance(original, int) or isinstance(original, bool) or original <= 0:
            raise ConfigError(
                f"{name}.original_max_position_embeddings must be a positive integer, got "
                f"{original!r}"
            )
        for key in ("beta_fast", "beta_slow"):
            if not _number(getattr(self, key)) or getattr(self, key) <= 0:
                raise ConfigError(f"{name}.{key} must be a number > 0, got {getattr(self, key)!r}")
        if self.beta_fast < self.beta_slow:
            raise ConfigError(
                f"{name}.beta_fast ({self.beta_fast}) must be >= beta_slow ({self.beta_slow})"
            )
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            value = getattr(self, key)
            if value is not None and (not _number(value) or value < 0):
                raise ConfigError(f"{name}.{key} must be None or a number >= 0, got {value!r}")
        if not isinstance(self.truncate, bool):
            raise ConfigError(f"{name}.truncate must be true or false, got {self.truncate!r}")

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> YarnScaling:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise ConfigError(
                f"unknown model.rope_scaling setting(s) {unknown}; allowed: {sorted(fields)}"
            )
        try:
            return cls(**dict(settings))
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"model.rope_scaling: {e}") from e


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions and numerics of a Qwen2/Qwen2.5 decoder.

    `param_dtype` is how weights are stored, `dtype` the compute dtype of activations and matmul
    operands; norms, RoPE tables and softmax run in fp32 and logits are always returned in fp32.
    """

    vocab_size: int  # tokens of the embedding table (Qwen2.5: 151,936)
    hidden_size: int  # the residual stream's width
    intermediate_size: int  # the MLP's hidden width
    num_layers: int  # decoder layers
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (grouped-query attention: divides num_heads)
    head_dim: int  # per head (even, for RoPE)
    rms_norm_eps: float = 1e-6  # RMSNorm's epsilon
    rope_theta: float = 1_000_000.0  # RoPE's base
    tie_word_embeddings: bool = False  # the output projection is the embedding table
    max_position_embeddings: int = 32768  # as the checkpoint's config.json records it
    param_dtype: str = "float32"  # how weights are stored: one of DTYPES
    dtype: str = "float32"  # activations and matmul operands: one of DTYPES
    # what the backward recomputes: one of REMAT_POLICIES ("full": each layer's forward)
    remat_policy: str = "none"
    kernels: str = "auto"  # one of KERNELS: "auto" = Pallas on TPU, XLA elsewhere
    # one of AHN_TYPES; None: a plain Qwen2 model without AHN weights
    ahn_type: str | None = None
    full_attention_layers: tuple[int, ...] = ()  # layers kept as full attention in every mode
    # YaRN settings as transformers' rope_parameters (e.g. {"factor": 4.0,
    # "original_max_position_embeddings": 32768}), set in the config file (a base checkpoint's
    # config.json decides); None: plain RoPE
    rope_scaling: YarnScaling | None = None

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
        if self.kernels not in KERNELS:
            raise ConfigError(f"model.kernels must be one of {KERNELS}, got {self.kernels!r}")
        if self.ahn_type is not None and self.ahn_type not in AHN_TYPES:
            raise ConfigError(f"ahn.type must be one of {AHN_TYPES}, got {self.ahn_type!r}")
        if isinstance(self.rope_scaling, Mapping):  # from a config file or `to_dict`
            object.__setattr__(self, "rope_scaling", YarnScaling.from_dict(self.rope_scaling))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, YarnScaling):
            raise ConfigError(
                f"model.rope_scaling must be None or YaRN settings, got {self.rope_scaling!r}"
            )
        layers = tuple(self.full_attention_layers)
        bad = [i for i in layers if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(
                f"ahn.full_attention_layers has layer ids {bad} outside [0, {self.num_layers})"
            )
        twice = sorted({i for i in layers if layers.count(i) > 1})
        if twice:
            raise ConfigError(f"ahn.full_attention_layers names layers {twice} more than once")
        object.__setattr__(self, "full_attention_layers", tuple(sorted(layers)))

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
