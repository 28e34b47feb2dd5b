"""HF `config.json` <-> ModelConfig: what transformers 4 and 5 write for Qwen2/Qwen2.5, read with
clear errors for what we do not implement, and written back for exports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ahn_jax.config import ConfigError, ModelConfig

SUPPORTED_MODEL_TYPES = ("qwen2",)


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
    """A `config.json` dict describing the same model (for exports) to transformers 4 and 5
    alike: transformers 4 reads `rope_theta` and `torch_dtype` (without `rope_theta` it silently
    builds the model with theta 10,000), transformers 5 `rope_parameters` and `dtype`."""
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
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "use_sliding_window": False,
        "torch_dtype": config.param_dtype,
        "dtype": config.param_dtype,
    }
