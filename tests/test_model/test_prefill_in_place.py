"""Prefill updates the cache in place: every chunk after the first donates the cache the previous
chunk returned (an accelerator holds one cache through a long prompt, not two), and the caller's
cache is donated only with `donate=True`. The results are those of a prefill that copies. That
XLA:TPU then writes the chunk where the cache lies: test_launch.py (XLA:CPU copies k and v for a
chunk of several tokens, which reads the old slots before writing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from shared import random_ids, tiny_config

from ahn_jax.config import AHN_TYPES
from ahn_jax.model import prefill as prefill_lib
from ahn_jax.model import transformer
from ahn_jax.model.transformer import init_model

LENGTHS = (5, 13, 9)  # three chunks of 5: the second and third leave rows out


@pytest.fixture(scope="module")
def model():
    return init_model(tiny_config(ahn_type="gdn"), ahn_output_init="normal")


def _spy_on_donations(monkeypatch):
    """The caches handed to each chunk (and to the ragged batch's row replacement), in order."""
    handed = []

    def spy(real, position):
        def call(*args, **kwargs):
            handed.append(args[position])
            return real(*args, **kwargs)

        return call

    for name in ("extend_cache", "extend_cache_in_place"):
        monkeypatch.setattr(transformer, name, spy(getattr(transformer, name), 3))
    monkeypatch.setattr(prefill_lib, "_with_rows_in_place", spy(prefill_lib._with_rows_in_place, 0))
    return handed


def _deleted(cache) -> bool:
    return all(x.is_deleted() for x in jax.tree.leaves(cache))


def _untouched(cache) -> bool:
    return not any(x.is_deleted() for x in jax.tree.leaves(cache))


@pytest.mark.parametrize("donate", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_chunks_after_the_first_take_the_cache_in_place(model, monkeypatch, donate, ragged):
    ids = np.asarray(random_ids(64, (3, max(LENGTHS)), seed=1))
    lengths = LENGTHS if ragged else None
    expected = model.prefill(ids, model.init_cache(3, window=6, sinks=2), lengths=lengths,
                             chunk_size=5)  # fmt: skip
    handed = _spy_on_donations(monkeypatch)
    cache = model.init_cache(3, window=6, sinks=2)
    logits, after = model.prefill(ids, cache, lengths=lengths, chunk_size=5, donate=donate)
    for got, want in zip(jax.tree.leaves((logits, after)), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)
    assert handed[0] is cache and (_deleted(cache) if donate else _untouched(cache))
    # ragged: chunk 2's rows, the whole cache they go back into, chunk 3's rows and theirs
    assert len(handed) == (5 if ragged else 3)
    assert all(_deleted(spent) for spent in handed[1:])
    assert _untouched(after)


def test_all_logits_chunks_take_the_cache_in_place(model, monkeypatch):
    ids = np.asarray(random_ids(64, (2, 12), seed=2))
    expected, _ = model.prefill(ids, model.init_cache(2, window=6, sinks=2), chunk_size=5,
                                all_logits=True)  # fmt: skip
    handed = _spy_on_donations(monkeypatch)
    cache = model.init_cache(2, window=6, sinks=2)
    logits, _ = model.prefill(ids, cache, chunk_size=5, all_logits=True)
    np.testing.assert_array_equal(logits, expected)
    assert len(handed) == 3 and _untouched(cache) and all(map(_deleted, handed[1:]))


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_every_row_running_every_chunk_gives_what_leaving_ended_rows_out_does(
    ahn_type, monkeypatch
):
    """On an accelerator each chunk runs every row (rows taken out would be a second cache in
    device memory): a row whose prompt has ended gets no new tokens, keeps its logits and its
    cache as they were, and decodes on the same."""
    model = init_model(tiny_config(ahn_type=ahn_type), ahn_output_init="normal")
    ids = np.asarray(random_ids(64, (3, max(LENGTHS)), seed=4))

    def prefill_and_decode():
        cache = model.init_cache(3, window=6, sinks=2)
        logits, cache = model.prefill(ids, cache, lengths=LENGTHS, chunk_size=5, donate=True)
        after, _ = model.decode_step(jnp.asarray([1, 2, 3]), cache)
        return logits, cache, after

    left_out = prefill_and_decode()
    handed = _spy_on_donations(monkeypatch)
    monkeypatch.setattr(prefill_lib, "ended_rows_left_out", lambda: False)
    every_row = prefill_and_decode()
    # three chunks of all 3 rows, none taken out and put back
    assert len(handed) == 3 + 1 and all(c.batch_size == 3 for c in handed)
    assert every_row[1].length.tolist() == list(LENGTHS)
    for got, want in zip(jax.tree.leaves(every_row), jax.tree.leaves(left_out), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_generate_and_perplexity_hand_their_own_caches_over(model, monkeypatch):
    from ahn_jax.evaluation import perplexity
    from ahn_jax.inference.generate import generate

    handed = _spy_on_donations(monkeypatch)
    generate(model, [[1, 2, 3, 4, 5, 6, 7], [3, 4]], max_new_tokens=2, mode="ahn", window=6,
             sinks=2, chunk_size=3)  # fmt: skip
    # prefill's 3 chunks, the last two of row 0 alone (taken out and put back); the decode steps
    # call the same function inside their own jit (tracers)
    prefilled = [c for c in handed if not isinstance(c.k[0], jax.core.Tracer)]
    assert len(prefilled) == 5 and all(map(_deleted, prefilled))  # the first chunk's cache too
    cache = model.init_cache(1, window=6, sinks=2)
    ids = np.asarray(random_ids(64, (1, 6), seed=5))
    perplexity._chunk_nll(nnx.graphdef(model), nnx.state(model), ids[:, :5], ids[:, 1:], cache)
    assert _deleted(cache)
