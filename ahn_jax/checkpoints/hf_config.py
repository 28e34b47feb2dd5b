"""HF `config.json` <-> ModelConfig: what transformers 4 and 5 write for Qwen2/Qwen2.5, read with
clear errors for what we do not implement, and written back for exports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import logging

from ahn_jax.cli import absent, training_run_note
from ahn_jax.config import ConfigError, ModelConfig
from ahn_jax.config.model import YarnScaling

SUPPORTED_MODEL_TYPES = ("qwen2",)


# The `rope_parameters` keys transformers' YaRN reads (modeling_rope_utils._compute_yarn_parameters)
_YARN_KEYS = ("attention_factor", "mscale", "mscale_all_dim")


def _yarn_settings(hf: Mapping[str, Any], params: Mapping[str, Any], key: str) -> YarnScaling:
    """YaRN as transformers 5 resolves it: `original_max_position_embeddings` from a top-level key
    if there is one, else the RoPE dict's, else `max_position_embeddings`; a null `factor` is
    max_position_embeddings / original; 0 or null betas are 32 and 1; a null `truncate` is false."""
    if "factor" not in params:
        raise ConfigError(f"config.json key '{key}.factor' is required for YaRN")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(
            f"config.json key '{key}.partial_rotary_factor' = "
            f"{params['partial_rotary_factor']!r} is not supported (only 1.0)"
        )
    max_positions = hf.get("max_position_embeddings", 32768)
    original = hf.get("original_max_position_embeddings")
    original = original or params.get("original_max_position_embeddings") or max_positions
    factor = params["factor"]
    factor = max_positions / original if factor is None else factor
    if "original_max_position_embeddings" in params and factor != max_positions / original:
        _warn_transformers4_yarn(key, factor, max_positions / original)
    try:
        return YarnScaling(
            factor=factor,
            original_max_position_embeddings=original,
            beta_fast=params.get("beta_fast") or 32.0,
            beta_slow=params.get("beta_slow") or 1.0,
            truncate=bool(params.get("truncate", True)),
            **{name: params.get(name) for name in _YARN_KEYS},
        )
    except ConfigError as e:
        raise ConfigError(f"config.json key '{key}': {e}") from e


def _warn_transformers4_yarn(key: str, factor: float, ratio: float) -> None:
    """Qwen2.5's 128k setting (factor 4, original = max_position_embeddings = 32,768) is read two
    ways: transformers >= 4.56 and 5 (and vLLM) scale by `factor`, as we do; earlier transformers,
    4.51 (the AHN reference's) included, replace it by max_position_embeddings / original
    (huggingface/transformers#38224), for Qwen2.5 1: no scaling at all. Said once per load, so
    that a comparison with such a run is not a surprise (tests/test_checkpoints/
    test_transformers4.py)."""
    logging.warning(
        "config.json key '%s': YaRN scales by factor %g here (as transformers >= 4.56 and vLLM); "
        "transformers < 4.56, 4.51 included (the AHN reference's), scales by "
        "max_position_embeddings / original_max_position_embeddings = %g instead. To compare "
        "with such a run, set the factor to %g.",
        key, factor, ratio, ratio,
    )  # fmt: skip


def _rope_settings(hf: Mapping[str, Any]) -> tuple[float, YarnScaling | None]:
    """RoPE theta and YaRN from transformers 4 keys (`rope_theta`, `rope_scaling`) or 5 keys
    (`rope_parameters`). Both versions take a non-empty `rope_scaling` over `rope_parameters`, and
    a theta inside the chosen dict over the top-level `rope_theta`."""
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(key) or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"config.json key {key!r} must be an object, got {params!r}")
    nested = sorted(k for k, v in params.items() if isinstance(v, Mapping))
    if nested:
        raise ConfigError(
            f"config.json key '{key}.{nested[0]}': RoPE settings per layer type are not supported"
        )
    theta = params.get("rope_theta", hf.get("rope_theta"))
    theta = 10_000.0 if theta is None else float(theta)  # transformers' Qwen2Config default
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "yarn":
        raise ConfigError(
            f"config.json key '{key}.rope_type' = {rope_type!r} is not supported "
            "(only 'default' RoPE and 'yarn' scaling are implemented)"
        )
    return theta, _yarn_settings(hf, params, key)


def _rope_export(config: ModelConfig) -> dict[str, Any]:
    """RoPE keys of an export. YaRN goes in both dicts: transformers 4 reads only `rope_scaling`
    (without `rope_theta` inside: it warns on keys it does not know), 5 prefers `rope_scaling` when
    present and takes theta from the top-level `rope_theta`, so both build the same model."""
    theta = config.rope_theta
    keys = {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    s = config.rope_scaling
    if s is None:
        return keys
    yarn = {
        "rope_type": "yarn",
        "factor": s.factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
        "beta_fast": s.beta_fast,
        "beta_slow": s.beta_slow,
        **{name: getattr(s, name) for name in _YARN_KEYS if getattr(s, name) is not None},
    }
    if not s.truncate:  # transformers 5 only; the default (true) is left out for transformers 4
        yarn["truncate"] = False
    keys["rope_scaling"] = yarn
    keys["rope_parameters"] = {**yarn, "rope_theta": theta}
    return keys


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
    rope_theta, rope_scaling = _rope_settings(hf)
    settings = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not Path(directory).exists():
        raise FileNotFoundError(f"{directory} {absent(directory)}")
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}{training_run_note(directory)}")
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
        **_rope_export(config),
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        # null, not absent: transformers 4 takes a missing key as 4096 and applies it to Qwen2's
        # eager/sdpa mask whatever use_sliding_window says (ahn_weights.base_hf_config)
        "use_sliding_window": False,
        "sliding_window": None,
        "torch_dtype": config.param_dtype,
        "dtype": config.param_dtype,
    }
