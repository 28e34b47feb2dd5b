"""Generation equal to transformers' `generate` on a tiny Qwen2: greedy with a repetition penalty,
transformers' own sliding window as mode "swa", and generation_config.json under the flags."""

import copy
import json

import jax.numpy as jnp
import numpy as np
import pytest
from shared import generate_as_the_cli, hf_generate, hf_logits, save_tiny_qwen2
from transformers import Qwen2ForCausalLM

from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.inference import generate as generate_lib

NEW = 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, transformers model, our fp32 model) of one tiny Qwen2."""
    directory = tmp_path_factory.mktemp("qwen2")
    hf = save_tiny_qwen2(directory, seed=5)  # a seed whose greedy text varies
    return directory, hf, from_pretrained(directory)


def prompts(length: int, rows: int = 2, seed: int = 0) -> list[list[int]]:
    return np.random.default_rng(seed).integers(0, 97, (rows, length)).tolist()


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_greedy_with_repetition_penalty_equals_transformers(checkpoint, penalty):
    _, hf, model = checkpoint
    ids = prompts(7)
    theirs = hf_generate(hf, ids, do_sample=False, repetition_penalty=penalty, max_new_tokens=NEW)
    ours = generate_lib.generate(
        model, ids, max_new_tokens=NEW, mode="full", window=0, repetition_penalty=penalty
    )
    assert ours == theirs
    plain = generate_lib.generate(model, ids, max_new_tokens=NEW, mode="full", window=0)
    assert plain != ours  # the penalty changed the choice


def test_swa_without_sinks_equals_transformers_sliding_window(checkpoint):
    """transformers' Qwen2 sliding window (key k visible from query q iff q - k < W,
    masking_utils.sliding_window_overlay) is our visibility rule with S = 0."""
    _, hf, model = checkpoint
    window = 5
    config = copy.deepcopy(hf.config)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, window, 0
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    config._attn_implementation = "eager"
    windowed = Qwen2ForCausalLM(config).eval()
    windowed.load_state_dict(hf.state_dict())
    ids = prompts(12, seed=1)  # longer than the window from the start
    theirs = hf_generate(windowed, ids, do_sample=False, repetition_penalty=1.3, max_new_tokens=NEW)
    ours = generate_lib.generate(
        model, ids, max_new_tokens=NEW, mode="swa", window=window, sinks=0, repetition_penalty=1.3
    )
    assert ours == theirs
    full = hf_generate(hf, ids, do_sample=False, repetition_penalty=1.3, max_new_tokens=NEW)
    assert full != theirs  # the window mattered


def test_generation_config_file_under_flags_equals_transformers(checkpoint, tmp_path):
    directory, _, model = checkpoint
    ids = prompts(6, seed=2)
    penalized = generate_lib.generate(
        model, ids, max_new_tokens=15, mode="full", window=0, repetition_penalty=1.3
    )
    # the file's eos: a token of row 0 that row 1 never makes, so that it stops row 0 only
    eos = next(t for t in penalized[0][3:] if t not in penalized[1])
    # min_p: a warper ahn_jax does not implement, which transformers applies only when sampling
    file = dict(do_sample=False, repetition_penalty=1.3, temperature=0.7, top_k=20, top_p=0.8,
                min_p=0.05)  # fmt: skip
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    (tmp_path / "generation_config.json").write_text(
        json.dumps({**file, "max_length": 6 + 15, "eos_token_id": [eos]})
    )
    hf = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()  # it reads generation_config.json
    assert hf.generation_config.repetition_penalty == 1.3
    results = {}
    for flags in ({}, {"repetition_penalty": 1.0}, {"max_new_tokens": 4}):
        results[len(results)] = ours = generate_as_the_cli(model, tmp_path, ids, **flags)
        assert ours == hf_generate(hf, ids, **flags), flags
    # no flags: the file's penalty, greedy (its sampling settings unused), its length and eos
    assert results[0] == [penalized[0][: penalized[0].index(eos)], penalized[1]]
    assert results[1] != results[0]  # the flag's penalty won
    assert max(len(row) for row in results[2]) == 4  # max_new_tokens wins over max_length


def test_bf16_logits_tie_as_transformers_rounds_them(tmp_path):
    """transformers' bf16 lm_head returns bf16 logits, which `generate` copies to fp32: two top
    logits closer than a bf16 step tie there and the argmax takes the lower id. Ours accumulate
    the head in fp32, so generate rounds them to the compute dtype first. A head whose tokens t
    and t + 1 differ by far less than a bf16 step (t + 1 higher in fp32) must give t."""
    import torch

    hf = save_tiny_qwen2(tmp_path, seed=3, dtype=torch.bfloat16)
    D, V = hf.config.hidden_size, hf.config.vocab_size
    ids = prompts(9, rows=1, seed=3)
    # the last position's final hidden state h, read through an identity head
    head = torch.zeros(V, D, dtype=torch.bfloat16)
    head[:D] = torch.eye(D)
    hf.lm_head.weight.data = head
    h = hf_logits(hf, np.asarray(ids))[0, -1, :D]
    j, k = np.argsort(-np.abs(h))[:2]
    t = 10
    head = torch.zeros(V, D)
    head[t, j] = head[t + 1, j] = 4.0 * float(np.sign(h[j]))  # both on top, equal...
    head[t + 1, k] = 2.0**-9 * float(np.sign(h[k]))  # but for a nudge << a bf16 step
    hf.lm_head.weight.data = head.to(torch.bfloat16)
    theirs_logits = hf_logits(hf, np.asarray(ids))[0, -1]
    assert theirs_logits[t] == theirs_logits[t + 1] == theirs_logits.max()  # tied in bf16
    assert hf_generate(hf, ids, do_sample=False, max_new_tokens=1) == [[t]]

    ours = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    ours.lm_head[...] = jnp.asarray(head.numpy().T, jnp.bfloat16)
    cache = ours.init_cache(1, window=len(ids[0]), mode="full", max_length=len(ids[0]))
    logits, _ = ours.prefill(np.asarray(ids, np.int32), cache)
    assert logits[0, t + 1] > logits[0, t] == np.sort(np.asarray(logits[0]))[-2]  # fp32: apart
    assert generate_lib.generate(ours, ids, max_new_tokens=1, mode="full", window=0) == [[t]]
