"""The token choice: transformers' logits processors, score for score, and the sampler's draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from shared import assert_same_scores
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from ahn_jax.inference import sampling as sampling_lib
from ahn_jax.inference.sampling import Sampling

VOCAB = 211


@pytest.fixture(scope="module")
def hf_model():
    """Only for its `_get_logits_processor`: the processors `generate` builds, in its order."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize(
    "settings",
    [
        dict(
            do_sample=False, repetition_penalty=1.3, temperature=0.5, top_k=3
        ),  # all but penalty off
        dict(do_sample=False, repetition_penalty=0.8),
        dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05),
        dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.0),
        dict(do_sample=True, temperature=2.0, top_k=7, top_p=1.0, repetition_penalty=1.2),
        dict(do_sample=True, temperature=0.3, top_k=500, top_p=0.5, repetition_penalty=1.0),
    ],
)
def test_processed_scores_equal_transformers(hf_model, settings):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, VOCAB)) * 3).astype(np.float32)
    ids = rng.integers(0, 40, (3, 25))  # repeats within a row: the penalty applies once per token
    processors = hf_model._get_logits_processor(
        GenerationConfig(**{"top_k": 50, "top_p": 1.0, "temperature": 1.0, **settings}),
        input_ids_seq_length=ids.shape[1],
        device="cpu",
    )
    theirs = processors(torch.tensor(ids), torch.tensor(logits)).numpy()
    sampling = Sampling(**settings)
    seen = sampling_lib.presence_mask(jnp.asarray(ids, jnp.int32), VOCAB)
    ours = np.asarray(
        jax.jit(sampling_lib.process_logits, static_argnums=1)(logits, sampling, seen)
    )
    assert_same_scores(ours, theirs)
    if settings.get("top_k") or settings.get("top_p", 1) < 1:
        assert np.isneginf(theirs).any() == settings["do_sample"]  # the filters did something
    if not settings["do_sample"]:
        chosen = sampling_lib.sample_token(logits, jax.random.key(0), sampling, seen)
        np.testing.assert_array_equal(np.asarray(chosen), theirs.argmax(-1))


def test_presence_mask_follows_the_generated_tokens():
    seen = sampling_lib.presence_mask(jnp.asarray([[1, 1, 3], [0, 2, 2]]), 5)
    assert np.asarray(seen).tolist() == [[0, 1, 0, 1, 0], [1, 0, 1, 0, 0]]
    seen = sampling_lib.mark_seen(seen, jnp.asarray([4, 2]))
    assert np.asarray(seen).tolist() == [[0, 1, 0, 1, 1], [1, 0, 1, 0, 0]]


def test_sampler_greedy_and_nucleus():
    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]))
    keys = jax.random.split(jax.random.key(0), 300)

    def draw(**settings):
        sampling = Sampling(**settings)
        return np.asarray(jax.vmap(lambda k: sampling_lib.sample_token(logits, k, sampling))(keys))

    assert draw(temperature=0.5, top_p=0.5).tolist() == [[0, 2]] * 300  # greedy: settings unused
    assert np.all(draw(do_sample=True, top_p=0.5) == [0, 2])  # a nucleus of one token
    nucleus = draw(do_sample=True, top_p=0.85)  # row 0: {0, 1}; row 1: {2, 1}
    assert set(nucleus[:, 0]) == {0, 1} and set(nucleus[:, 1]) == {1, 2}
    assert set(draw(do_sample=True, top_k=2)[:, 0]) == {0, 1}
    full = draw(do_sample=True)[:, 0]
    assert set(full) == {0, 1, 2}
    assert abs(np.mean(full == 0) - 0.6) < 0.1


def test_sampling_settings_are_checked_where_used():
    Sampling(temperature=0.0, top_k=-1, top_p=2.0)  # greedy ignores them, as transformers does
    with pytest.raises(ValueError, match="temperature.*do_sample false"):
        Sampling(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="repetition_penalty"):
        Sampling(repetition_penalty=0.0)
    with pytest.raises(ValueError, match="seen"):
        sampling_lib.process_logits(jnp.zeros((1, 3)), Sampling(repetition_penalty=1.2))
