"""YaRN RoPE scaling equals transformers' for Qwen2: frequencies, attention factor and logits, read
from transformers 4 (`rope_scaling`) and 5 (`rope_parameters`) keys and exported back."""

import json

import numpy as np
import pytest
from shared import hf_logits, random_ids, save_tiny_qwen2

import ahn_jax
from ahn_jax.checkpoints.hf_config import from_hf_config, read_hf_config, to_hf_config
from ahn_jax.config import ConfigError, ModelConfig
from ahn_jax.model.layers import yarn_frequencies

# Qwen2.5's documented 128k setting (its model cards), on a small config.json
QWEN25_YARN = {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
BASE = {
    "model_type": "qwen2",
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 1_000_000.0,
    "max_position_embeddings": 32768,
}

ROPE_CASES = {  # config.json changes
    "qwen25_transformers4": {"rope_scaling": QWEN25_YARN},
    "qwen25_transformers5": {
        "rope_parameters": {**QWEN25_YARN, "rope_type": "yarn", "rope_theta": 1e6},
        "rope_theta": None,
    },
    "head128_theta1e4": {"head_dim": 128, "rope_theta": 1e4, "rope_scaling": QWEN25_YARN},
    "betas_no_truncate": {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 16,
            "beta_slow": 2,
            "truncate": False,
        },
    },  # fmt: skip
    "mscale_pair": {
        "rope_scaling": {**QWEN25_YARN, "mscale": 0.707, "mscale_all_dim": 1.0},
    },
    "attention_factor": {"rope_scaling": {**QWEN25_YARN, "attention_factor": 1.3}},
    "zero_betas_null_factor": {  # 0 betas mean 32 and 1; a null factor is max / original
        "max_position_embeddings": 131072,
        "rope_scaling": {**QWEN25_YARN, "factor": None, "beta_fast": 0, "beta_slow": 0},
    },
    "original_at_top_level": {  # transformers 5 prefers a top-level original length
        "original_max_position_embeddings": 1024,
        "rope_scaling": QWEN25_YARN,
    },
    "no_original": {"rope_scaling": {"type": "yarn", "factor": 2.0}},
}


def transformers_rope(tmp_path, hf: dict):
    """inv_freq and attention scaling of transformers' Qwen2RotaryEmbedding for a config.json."""
    from transformers import AutoConfig
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    (tmp_path / "config.json").write_text(json.dumps(hf))
    rotary = Qwen2RotaryEmbedding(AutoConfig.from_pretrained(tmp_path))
    return rotary.inv_freq.numpy(), rotary.attention_scaling


def _ours(config: ModelConfig):
    return yarn_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_frequencies_and_attention_factor_equal_transformers(tmp_path, case):
    hf = {k: v for k, v in {**BASE, **ROPE_CASES[case]}.items() if v is not None}
    config = from_hf_config(hf)
    assert config.rope_scaling is not None
    inv_freq, attention_factor = _ours(config)
    reference, reference_factor = transformers_rope(tmp_path, hf)
    np.testing.assert_allclose(inv_freq, reference, rtol=2e-7, atol=0)
    assert attention_factor == pytest.approx(reference_factor, rel=1e-12)
    # and an export of what we read builds the same rotary embedding in transformers
    exported = transformers_rope(tmp_path, json.loads(json.dumps(to_hf_config(config))))
    np.testing.assert_array_equal(exported[0], reference)
    assert exported[1] == pytest.approx(reference_factor, rel=1e-12)


def test_yarn_changes_the_frequencies():
    config = from_hf_config({**BASE, "rope_scaling": QWEN25_YARN})
    inv_freq, attention_factor = _ours(config)
    plain = 1.0 / 1e6 ** (np.arange(0, 16, 2) / 16)
    assert attention_factor == pytest.approx(0.1 * np.log(4.0) + 1.0)
    np.testing.assert_allclose(inv_freq[:2], plain[:2], rtol=1e-6)  # fast dims kept
    np.testing.assert_allclose(inv_freq[-1], plain[-1] / 4.0, rtol=1e-6)  # slow dims / factor


YARN_MODELS = {  # tiny Qwen2s: the original length is 32 and the sequences run past it
    "factor4": dict(factor=4.0, original_max_position_embeddings=32),
    "factor4_no_truncate_mscale": dict(
        factor=4.0,
        original_max_position_embeddings=32,
        truncate=False,
        mscale=0.8,
        mscale_all_dim=0.5,
    ),  # fmt: skip
    "factor8_betas": dict(
        factor=8.0, original_max_position_embeddings=16, beta_fast=8, beta_slow=2
    ),
}


@pytest.mark.parametrize("case", sorted(YARN_MODELS))
def test_logits_match_transformers_with_yarn(tmp_path, case):
    rope = {"rope_type": "yarn", "rope_theta": 10_000.0, **YARN_MODELS[case]}
    hf_model = save_tiny_qwen2(tmp_path, max_position_embeddings=128, rope_parameters=rope)
    model = ahn_jax.from_pretrained(tmp_path)
    assert model.config.rope_scaling.factor == rope["factor"]
    ids = random_ids(hf_model.config.vocab_size, shape=(2, 70))
    logits = model(ids, mode="full")
    np.testing.assert_allclose(np.asarray(logits), hf_logits(hf_model, ids), atol=1e-4, rtol=0)
    # far past factor * original, at explicit positions
    positions = np.stack([np.arange(70) * 7 + 3, np.arange(70) + 400]).astype(np.int32)
    logits = model(ids, positions=positions, mode="full")
    reference = hf_logits(hf_model, ids, position_ids=positions)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-4, rtol=0)


def test_transformers4_rope_scaling_reads_the_same_model(tmp_path):
    """A config.json as Qwen2.5's model card writes it (`rope_scaling` with `type`, theta at the
    top level) loads the model transformers 5 builds from its own `rope_parameters`."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    hf_model = save_tiny_qwen2(tmp_path, max_position_embeddings=128, rope_parameters=rope)
    hf = read_hf_config(tmp_path)
    del hf["rope_parameters"]
    hf["rope_theta"] = 10_000.0
    hf["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    ids = random_ids(hf_model.config.vocab_size, shape=(1, 60))
    logits = ahn_jax.from_pretrained(tmp_path)(ids)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_config_round_trips_keep_yarn(tmp_path):
    config = from_hf_config({**BASE, "rope_scaling": {**QWEN25_YARN, "mscale": 0.7}})
    exported = json.loads(json.dumps(to_hf_config(config)))
    assert exported["rope_scaling"]["rope_type"] == exported["rope_parameters"]["rope_type"]
    assert exported["rope_parameters"]["rope_theta"] == exported["rope_theta"] == 1e6
    assert "rope_theta" not in exported["rope_scaling"]  # transformers 4 would warn about it
    assert from_hf_config(exported) == config
    # transformers 5 reads the export as the same YaRN
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps(exported))
    loaded = AutoConfig.from_pretrained(tmp_path).rope_parameters
    assert (loaded["rope_type"], loaded["factor"], loaded["rope_theta"]) == ("yarn", 4.0, 1e6)
    assert loaded["original_max_position_embeddings"] == 32768 and loaded["mscale"] == 0.7
    # our own settings: a dict (config files, `to_dict`) becomes the frozen, hashable settings
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert hash(config) == hash(ModelConfig.from_dict(config.to_dict()))
    # default RoPE exports no scaling
    plain = to_hf_config(from_hf_config(BASE))
    assert "rope_scaling" not in plain and plain["rope_parameters"]["rope_type"] == "default"


@pytest.mark.parametrize(
    "rope, key",
    [
        ({"type": "yarn", "original_max_position_embeddings": 32}, "rope_scaling.factor"),
        ({**QWEN25_YARN, "factor": 0.5}, "rope_scaling.factor"),
        ({**QWEN25_YARN, "partial_rotary_factor": 0.5}, "rope_scaling.partial_rotary_factor"),
        ({**QWEN25_YARN, "beta_fast": 1, "beta_slow": 4}, "beta_fast"),
        ({**QWEN25_YARN, "mscale": "x"}, "rope_scaling.mscale"),
        ({"type": "dynamic", "factor": 2.0}, "rope_scaling.rope_type"),
        ({"full_attention": QWEN25_YARN}, "rope_scaling.full_attention"),
    ],
)
def test_bad_yarn_settings_name_the_key(rope, key):
    with pytest.raises(ConfigError, match=key):
        from_hf_config({**BASE, "rope_scaling": rope})


def test_model_settings_name_the_bad_yarn_key():
    base = {k: 8 for k in ("vocab_size", "hidden_size", "intermediate_size", "num_layers")}
    base.update(num_heads=1, num_kv_heads=1, head_dim=8)
    with pytest.raises(ConfigError, match=r"unknown model.rope_scaling setting\(s\) \['scale'\]"):
        ModelConfig(**base, rope_scaling={"factor": 4.0, "scale": 1})
    with pytest.raises(ConfigError, match="original_max_position_embeddings"):
        ModelConfig(**base, rope_scaling={"factor": 4.0})
    with pytest.raises(ConfigError, match="model.rope_scaling.truncate"):
        ModelConfig(
            **base, rope_scaling={"factor": 2, "original_max_position_embeddings": 4, "truncate": 1}
        )
