"""Layers kept as full attention in the decode cache: their K/V hold the whole context, the other
layers stay at S + W + 1 slots, and decoding equals the parallel forward."""

import jax
import jax.numpy as jnp
import pytest
from shared import random_ids, tiny_config

from ahn_jax.model.transformer import init_model

S, W, T = 3, 5, 20


@pytest.mark.parametrize("full_layers", [(1,), (0, 1, 2)])
def test_decode_with_full_attention_layers_equals_parallel_forward(full_layers):
    model = init_model(
        tiny_config(ahn_type="gdn", full_attention_layers=full_layers), ahn_output_init="normal"
    )
    ids = jnp.asarray(random_ids(64, (2, T), seed=5))
    parallel = model(ids, mode="ahn", window=W, sinks=S)
    cache = model.init_cache(2, window=W, sinks=S, max_length=T)
    assert [k.shape[0::3] for k in cache.full_k] == [(2, T)] * len(full_layers)
    assert len(cache.k) == 3 - len(full_layers)
    logits, cache = model.prefill(ids[:, :11], cache, all_logits=True)
    assert float(jnp.max(jnp.abs(logits - parallel[:, :11]))) <= 1e-5
    for t in range(11, T):
        logits, cache = model.decode_step(ids[:, t], cache)
        assert float(jnp.max(jnp.abs(logits - parallel[:, t]))) <= 1e-5, t


def test_only_full_layers_grow_with_the_context():
    model = init_model(tiny_config(ahn_type="gdn", full_attention_layers=(1,)))
    sizes = {n: model.init_cache(1, window=W, sinks=S, max_length=n) for n in (64, 128)}
    shapes = {n: jax.tree.map(jnp.shape, (c.k, c.v, c.gates, c.state)) for n, c in sizes.items()}
    assert shapes[128] == shapes[64]  # windowed layers: S + W + 1 slots
    grown = sizes[128].nbytes() - sizes[64].nbytes()
    kv_per_position = 2 * tiny_config().num_kv_heads * tiny_config().head_dim * 4
    assert grown == 64 * (kv_per_position + 4)  # one layer's K and V, and its slot position
    with pytest.raises(ValueError, match="needs max_length"):
        model.init_cache(1, window=W, sinks=S)
    cache = model.init_cache(1, window=W, sinks=S, max_length=8)
    with pytest.raises(ValueError, match=r"layers hold init_cache\(max_length=...\) = 8"):
        model.prefill(jnp.zeros((1, 9), jnp.int32), cache)
