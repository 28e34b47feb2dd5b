"""Ragged batches through the cache: prompts of different lengths prefill together, right-padded,
and decode on from their own positions; every row equals that row run alone (its parallel
forward, which equals prefill + decode: test_ahn_invariants.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared import random_ids, tiny_config

from ahn_jax.config import AHN_TYPES
from ahn_jax.model import decoder
from ahn_jax.model.transformer import init_model

S, W = 3, 5  # the memory starts at t = 8
LENGTHS = (3, 13, 9)  # before, well after and just after the memory starts
STEPS = 3


def _check_ragged(model, mode, window, sinks, *, chunk_size, max_length=None):
    total = max(LENGTHS) + STEPS
    ids = np.asarray(random_ids(64, (len(LENGTHS), total), seed=3))
    padded = ids[:, : max(LENGTHS)].copy()
    for row, length in enumerate(LENGTHS):
        padded[row, length:] = 63  # padding of any value must not matter
    kwargs = dict(window=window, sinks=sinks) if mode != "full" else {}
    alone = [
        model(ids[b : b + 1, : n + STEPS], mode=mode, **kwargs)[0] for b, n in enumerate(LENGTHS)
    ]
    cache = model.init_cache(
        len(LENGTHS), window=window, sinks=sinks, mode=mode, max_length=max_length
    )
    fed = []  # progress: the positions fed after each chunk, of the longest prompt's
    logits, cache = model.prefill(
        padded, cache, lengths=LENGTHS, chunk_size=chunk_size, on_chunk=lambda *a: fed.append(a)
    )
    longest = max(LENGTHS)
    assert fed == [(min(s + chunk_size, longest), longest) for s in range(0, longest, chunk_size)]
    assert cache.length.tolist() == list(LENGTHS)
    for step in range(STEPS + 1):
        for b, n in enumerate(LENGTHS):
            diff = float(jnp.max(jnp.abs(logits[b] - alone[b][n - 1 + step])))
            assert diff <= 1e-5, (mode, b, step, diff)
        if step < STEPS:
            next_ids = jnp.asarray([ids[b, n + step] for b, n in enumerate(LENGTHS)])
            logits, cache = model.decode_step(next_ids, cache)


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_ragged_ahn_rows_equal_rows_alone(ahn_type):
    model = init_model(tiny_config(ahn_type=ahn_type), ahn_output_init="normal")
    _check_ragged(model, "ahn", W, S, chunk_size=8)  # chunks end inside and after the rows


def test_ragged_rows_with_padded_gate_rows():
    """16 heads x 9 layers of DN gates: a gate row of 144 values per slot, padded to 256 lanes
    (cache.gate_width), read and written through the padding."""
    config = tiny_config(ahn_type="dn", num_heads=16, num_kv_heads=2, num_layers=9)
    model = init_model(config, ahn_output_init="normal")
    assert model.init_cache(1, window=W, sinks=S).gates.shape[-1] == 256
    _check_ragged(model, "ahn", W, S, chunk_size=8)


@pytest.fixture(params=["whole", "small"])
def cache_blocks(request, monkeypatch):
    """Prefill reads the cache whole ("whole": `masked_attention`, as every cache up to
    `decoder.CACHE_BLOCK` slots) or in blocks of 4 slots, those no query sees skipped ("small":
    `skipping_attention`, as longer caches); compiled anew, as the block is read while tracing."""
    if request.param == "small":
        monkeypatch.setattr(decoder, "CACHE_BLOCK", 4)
        jax.clear_caches()
        yield request.param
        jax.clear_caches()
    else:
        yield request.param


@pytest.mark.parametrize("cache_blocks", ["small"], indirect=True)  # "whole": the test above
def test_ragged_ahn_rows_through_cache_blocks(cache_blocks):
    """The ring (S + W + 1 = 9 slots) in blocks of 4: still filling in the first chunk, wrapped
    around in the second."""
    model = init_model(tiny_config(ahn_type="gdn"), ahn_output_init="normal")
    _check_ragged(model, "ahn", W, S, chunk_size=8)


@pytest.mark.parametrize("mode", ["swa", "full"])
def test_ragged_swa_and_full_rows_equal_rows_alone(mode, cache_blocks):
    model = init_model(tiny_config(), seed=1)
    window = W if mode == "swa" else max(LENGTHS) + STEPS
    # chunks of 8: the second chunk reads a partly filled cache (full: 16 slots)
    _check_ragged(model, mode, window, S if mode == "swa" else 0, chunk_size=8)


def test_ragged_with_full_attention_layers(cache_blocks):
    model = init_model(
        tiny_config(ahn_type="gdn", full_attention_layers=(1,)), ahn_output_init="normal"
    )
    _check_ragged(model, "ahn", W, S, chunk_size=8, max_length=max(LENGTHS) + STEPS)


def test_lengths_are_checked():
    model = init_model(tiny_config())
    cache = model.init_cache(2, window=W, sinks=S, mode="swa")
    ids = jnp.zeros((2, 4), jnp.int32)
    for bad in ([0, 4], [5, 4], [4]):
        with pytest.raises(ValueError, match="lengths must give each"):
            model.prefill(ids, cache, lengths=bad)
