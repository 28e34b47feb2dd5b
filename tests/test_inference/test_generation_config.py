"""generation_config.json: read as transformers reads it, flags over it, errors naming the key."""

import json

import pytest

from ahn_jax.inference.generation_config import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULTS,
    GenerationSettings,
    read_generation_config,
)

QWEN25_INSTRUCT = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}


def write(directory, content) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (directory / "generation_config.json").write_text(text)


def test_reads_qwen25_instruct_and_flags_win(tmp_path):
    assert read_generation_config(tmp_path) == DEFAULTS  # no file: transformers' defaults
    write(tmp_path, QWEN25_INSTRUCT)
    settings = read_generation_config(tmp_path)
    assert settings == GenerationSettings(
        do_sample=True,
        temperature=0.7,
        top_k=20,
        top_p=0.8,
        repetition_penalty=1.05,
        eos_token_ids=(151645, 151643),
    )
    flags = dict(do_sample=None, temperature=None, top_k=5, repetition_penalty=None)
    assert settings.merged(flags) == GenerationSettings(**{**vars(settings), "top_k": 5})
    assert not settings.merged({"do_sample": False}).do_sample
    assert settings.stop_ids([1, 2]) == [151645, 151643]
    assert DEFAULTS.stop_ids([1, 2]) == [1, 2]  # no eos in the file: the tokenizer's
    write(tmp_path, {"eos_token_id": 7, "temperature": 1, "max_new_tokens": None})
    settings = read_generation_config(tmp_path)
    assert settings.eos_token_ids == (7,) and settings.temperature == 1.0
    assert settings.max_new_tokens is None  # null: not set


def test_without_the_file_the_stop_ids_are_config_jsons_as_transformers_reads_them(tmp_path):
    """transformers builds the generation config from config.json when the checkpoint has no
    generation_config.json: its eos_token_id stops generation (not the tokenizer's end tokens)."""
    from transformers import GenerationConfig

    for eos, expected in ((151643, (151643,)), ([151645, 151643], (151645, 151643))):
        (tmp_path / "config.json").write_text(
            json.dumps({"model_type": "qwen2", "bos_token_id": 151643, "eos_token_id": eos})
        )
        theirs = GenerationConfig.from_pretrained(
            tmp_path, config_file_name="config.json", _from_model_config=True
        ).eos_token_id
        assert read_generation_config(tmp_path).eos_token_ids == expected
        assert tuple(theirs if isinstance(theirs, list) else [theirs]) == expected
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert read_generation_config(tmp_path) == DEFAULTS  # none named: the tokenizer's, ours
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="config.json: key 'eos_token_id'"):
        read_generation_config(tmp_path)


def test_lengths_as_transformers_counts_them():
    assert DEFAULTS.new_tokens(10) == DEFAULT_MAX_NEW_TOKENS
    assert GenerationSettings(max_length=30).new_tokens(10) == 20  # max_length counts the prompt
    assert GenerationSettings(max_length=30, max_new_tokens=4).new_tokens(10) == 4  # which wins
    with pytest.raises(ValueError, match="max_length = 10 .* 10 tokens"):
        GenerationSettings(max_length=10).new_tokens(10)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ({"temperature": "hot"}, "key 'temperature': must be a number"),
        ({"top_p": 1.5}, r"key 'top_p': must be in \[0, 1\]"),
        ({"top_k": 2.5}, "key 'top_k': must be an integer"),
        ({"do_sample": 1}, "key 'do_sample': must be true or false"),
        ({"eos_token_id": [1, "x"]}, "key 'eos_token_id': must be a token id"),
        ({"repetition_penalty": 0}, "key 'repetition_penalty': must be > 0"),
        ({"max_new_tokens": 0}, "key 'max_new_tokens': must be an integer >= 1"),
        ({"num_beams": 4}, "key 'num_beams' = 4 is not supported"),
        # transformers applies it to decoder-only models too (the prompt is the "encoder input")
        ({"encoder_repetition_penalty": 3.0}, "key 'encoder_repetition_penalty' = 3.0 is not"),
        ({"stop_strings": ["\n\n"]}, "key 'stop_strings'"),
        ({"min_new_tokens": "2"}, "key 'min_new_tokens' = '2'"),  # what transformers can't test
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, content, message):
    write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as error:
        read_generation_config(tmp_path)
    assert "generation_config.json" in str(error.value)


def test_sampling_only_keys_are_refused_only_when_sampling(tmp_path):
    """transformers adds the min_p / typical_p / cutoff / top_h warpers under do_sample alone: a
    greedy run (evaluate always; generate with --nodo_sample) ignores them as it does, a sampling
    run refuses them (they were refused even when greedy)."""
    write(tmp_path, {"do_sample": True, "min_p": 0.05, "epsilon_cutoff": 0.5, "top_k": 20})
    settings = read_generation_config(tmp_path)
    assert settings.top_k == 20 and settings.do_sample
    with pytest.raises(ValueError, match=r"generation_config.json: key 'min_p' = 0.05 is not"):
        settings.sampling()
    assert not settings.merged({"do_sample": False}).sampling().do_sample


def test_neutral_values_of_unsupported_keys_are_fine(tmp_path):
    """Values transformers' `generate` reads as "off" (its own tests in _get_logits_processor)."""
    neutral = {"num_beams": 1, "min_length": 0, "typical_p": 1.0, "output_scores": False,
               "min_p": 0.0, "min_new_tokens": 0, "suppress_tokens": [], "epsilon_cutoff": 1.0,
               "eta_cutoff": 0.0, "num_beam_groups": None, "token_healing": False,
               "encoder_repetition_penalty": 1.0, "guidance_scale": 1}  # fmt: skip
    write(tmp_path, neutral)
    assert read_generation_config(tmp_path) == DEFAULTS


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--top_p: must be in"):
        DEFAULTS.merged({"top_p": 2.0})
    with pytest.raises(ValueError, match="--beams: not a generation setting"):
        DEFAULTS.merged({"beams": 2})
    with pytest.raises(ValueError, match="temperature must be > 0 when sampling"):
        DEFAULTS.merged({"do_sample": True, "temperature": 0.0}).sampling()
