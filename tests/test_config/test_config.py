"""Model settings from HF config.json and from our config files, with errors naming the key."""

import json
import math
from pathlib import Path

import jax
import pytest
from shared import tiny_config

from ahn_jax.checkpoints.hf_config import from_hf_config, read_hf_config, to_hf_config
from ahn_jax.config import ConfigError, load_config_file, validate_config
from ahn_jax.model.transformer import abstract_model

CONFIGS = Path(__file__).parents[2] / "configs"

HF_QWEN25_3B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 70,
    "max_position_embeddings": 32768,
}


def test_transformers4_keys():
    config = from_hf_config(HF_QWEN25_3B)
    assert (config.hidden_size, config.num_layers, config.num_heads) == (2048, 36, 16)
    assert (config.num_kv_heads, config.head_dim, config.rope_theta) == (2, 128, 1e6)
    assert config.tie_word_embeddings


def test_transformers5_rope_parameters():
    hf = dict(HF_QWEN25_3B)
    del hf["rope_theta"], hf["rope_scaling"]
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 12345.0}
    hf["layer_types"] = ["full_attention"] * 36
    assert from_hf_config(hf).rope_theta == 12345.0


@pytest.mark.parametrize(
    "change, key",
    [
        ({"rope_scaling": {"type": "dynamic", "factor": 4.0}}, "rope_scaling.rope_type"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_parameters.rope_type"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types[1]"),
        ({"model_type": "llama"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "num_kv_heads"),
    ],
)
def test_unsupported_features_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_hf_config({**HF_QWEN25_3B, **change})


def test_missing_required_key():
    hf = dict(HF_QWEN25_3B)
    del hf["hidden_size"]
    with pytest.raises(ConfigError, match="'hidden_size'"):
        from_hf_config(hf)


def test_read_hf_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_hf_config(tmp_path)


def test_to_hf_config_round_trips():
    config = from_hf_config(HF_QWEN25_3B)
    assert from_hf_config(
        json.loads(json.dumps(to_hf_config(config))), param_dtype="bfloat16", dtype="bfloat16"
    ) == config.replace(param_dtype="bfloat16", dtype="bfloat16")


def test_exported_config_json_reads_the_same_in_transformers_4_and_5_keys(tmp_path):
    """transformers 4 reads `rope_theta`/`torch_dtype`, 5 `rope_parameters`/`dtype`: an export of
    a Qwen2.5 (theta 1e6) must carry both, or transformers 4 builds theta 10,000 without a word."""
    from transformers import AutoConfig

    config = from_hf_config(HF_QWEN25_3B, param_dtype="bfloat16")
    exported = to_hf_config(config)
    assert exported["rope_theta"] == exported["rope_parameters"]["rope_theta"] == 1_000_000.0
    assert exported["torch_dtype"] == exported["dtype"] == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(exported))
    loaded = AutoConfig.from_pretrained(tmp_path)  # transformers 5, the test extra's
    assert loaded.rope_parameters["rope_theta"] == 1_000_000.0
    assert from_hf_config(read_hf_config(tmp_path), param_dtype="bfloat16") == config


# Parameter counts of the released Qwen2.5-{3B,7B,14B}-Instruct safetensors (model cards: 3.09B,
# 7.61B, 14.7B).
@pytest.mark.parametrize(
    "name, count",
    [("qwen3b_gdn", 3_085_938_688), ("qwen7b_gdn", 7_615_616_512), ("qwen14b_gdn", 14_770_033_664)],
)
def test_real_configs_have_the_published_sizes(name, count):
    config = validate_config(load_config_file(CONFIGS / f"{name}.py")).replace(ahn_type=None)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_model(config))) == count


def test_real_configs_equal_the_hf_3b_config():
    ours = validate_config(load_config_file(CONFIGS / "qwen3b_gdn.py"))
    hf = from_hf_config(HF_QWEN25_3B, param_dtype="bfloat16", dtype="bfloat16", remat_policy="full")
    assert ours.ahn_type == "gdn"
    assert ours.replace(ahn_type=None) == hf


def test_tiny_config_is_cpu_sized():
    config = validate_config(load_config_file(CONFIGS / "tiny_gdn.py"))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_model(config)))
    assert n_params < 1_000_000


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"num_layers": 0}, "model.num_layers"),
        ({"param_dtype": "float8"}, "model.param_dtype"),
        ({"remat_policy": "sometimes"}, "model.remat_policy"),
        ({"head_dim": 7}, "model.head_dim"),
        ({"rms_norm_eps": 0.0}, "model.rms_norm_eps"),
        ({"full_attention_layers": (1, 1)}, r"full_attention_layers names layers \[1\] more"),
        ({"full_attention_layers": (9,)}, "full_attention_layers has layer ids"),
    ],
)
def test_model_config_validation_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**changes)


def test_full_attention_layers_are_kept_in_order():
    assert tiny_config(full_attention_layers=(1, 0)).full_attention_layers == (0, 1)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(tmp_path / "nope.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config_file(tmp_path / "empty.py")
    config = load_config_file(CONFIGS / "tiny_gdn.py")
    config.ahn.type = "lstm"
    with pytest.raises(ConfigError, match="ahn.type must be one of"):
        validate_config(config)
    config = load_config_file(CONFIGS / "tiny_gdn.py")
    config.model.unknown_knob = 3
    with pytest.raises(ConfigError, match="unknown_knob"):
        validate_config(config)
