"""The AHN model against docs/method.md §Invariants (tiny configs, all three AHN types)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from shared import flat_state, random_ids, tiny_config

from ahn_jax.config import AHN_TYPES
from ahn_jax.model import transformer as model_lib
from ahn_jax.model.layerwise import for_decoding, unstack_layers
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.transformer import init_model
from kernels.window_attention import causal_attention

S, W = 3, 5  # sinks, window: the memory starts at t = S + W = 8


def make(ahn_type, output_init="normal", **changes):
    return init_model(
        tiny_config(ahn_type=ahn_type, **changes), seed=0, ahn_output_init=output_init
    )


def token_ids(length, batch=2, seed=0):
    return jnp.asarray(random_ids(64, (batch, length), seed))


def max_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_zero_output_projection_equals_swa(ahn_type):
    model = make(ahn_type, output_init="zeros")
    ids = token_ids(40)
    swa = model(ids, mode="swa", window=W, sinks=S)
    assert max_diff(model(ids, mode="ahn", window=W, sinks=S), swa) <= 1e-6
    # and the memory is really there once its output projection is not zero
    assert max_diff(make(ahn_type)(ids, mode="ahn", window=W, sinks=S), swa) > 1e-3


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_short_sequences_equal_full_attention(ahn_type):
    model = make(ahn_type)
    for length in (S + W,):  # decoding covers every shorter prefix too
        ids = token_ids(length)
        full = model(ids)
        for mode in ("swa", "ahn"):
            assert max_diff(model(ids, mode=mode, window=W, sinks=S), full) <= 1e-6, mode
        # prefill + decode without the reference's quirk (which drops slot S while decoding)
        logits, cache = model.prefill(ids[:, :2], model.init_cache(2, window=W, sinks=S))
        assert max_diff(logits, full[:, 1]) <= 1e-6
        for t in range(2, length):
            logits, cache = model.decode_step(ids[:, t], cache)
            assert max_diff(logits, full[:, t]) <= 1e-6, t


def _first_layer(model):
    graphdef, state = nnx.split(model.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[0], state))


def _dependence(fn, argnum, args, length):
    """dep[t, p]: does output position t depend on input position p of argument `argnum`?

    Read off the exact gradient, not a perturbed forward: one VJP per output position with a
    random cotangent on that position only. Where t cannot see p, every path from p to t passes
    through an exact zero (a masked softmax weight exp(-1e30 - m) = 0, a write gate beta = 0 or
    log-decay 0 outside the memory, a causal mask), and products and sums of exact zeros stay
    exactly zero whatever the CPU's rounding, vector width or FMA use; where t sees p the gradient
    is a sum of non-zero terms that random cotangents make cancel with probability zero. A perturbed
    forward compared bit-for-bit across the rows of one vmapped batch instead depends on how the
    CPU rounds each row (it failed on an AMD EPYC: output 9 "depended" on key 13)."""
    output, pullback = jax.vjp(lambda x: fn(*args[:argnum], x, *args[argnum + 1 :]), args[argnum])
    assert output.shape[:2] == (1, length)
    cotangents = jax.random.normal(jax.random.key(argnum), (length, *output.shape))
    one_position = jnp.eye(length).reshape(length, 1, length, *(1,) * (output.ndim - 2))
    (grads,) = jax.jit(jax.vmap(pullback))(cotangents * one_position)  # [t, 1, p, ...]
    return np.asarray(grads.reshape(length, length, -1) != 0).any(-1)  # [t, p]


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_eviction_timing(ahn_type):
    """S = 3, W = 5: attention sees [0, S) and [t - W + 1, t]; the memory holds [S, t - W]."""
    config = tiny_config(ahn_type=ahn_type)
    layer = _first_layer(init_model(config, ahn_output_init="normal"))
    T, N, K, H, D = 14, config.num_heads, config.num_kv_heads, config.head_dim, config.hidden_size
    rng = np.random.default_rng(1)
    h, q, k, v = (
        jnp.asarray(rng.normal(size=(1, T, *shape)), jnp.float32)
        for shape in ((D,), (N, H), (K, H), (K, H))
    )
    t, p = np.arange(T)[:, None], np.arange(T)[None, :]
    lossless = (p <= t) & ((t - p < W) | (p < S))
    in_memory = (p >= S) & (p <= t - W)
    active = t >= S + W

    def attention(q, k, v):
        return causal_attention(q, k, v, window=W, sinks=S)

    def memory(h, q, k, v):
        return layer.memory(h, q, k, v, W, S)

    if ahn_type == "gdn":  # the attention is the same for every AHN type
        np.testing.assert_array_equal(_dependence(attention, 2, (q, k, v), T), lossless)
        # keys too, except query 0: a softmax over one key does not depend on that key
        np.testing.assert_array_equal(_dependence(attention, 1, (q, k, v), T)[1:], lossless[1:])
    assert in_memory[S + W].tolist() == [p == S for p in range(T)]  # the first eviction
    for argnum in (2, 3):  # evicted keys and values
        np.testing.assert_array_equal(_dependence(memory, argnum, (h, q, k, v), T), in_memory)
    # the query and the output gate come from the current token; write gates from the evicted one
    np.testing.assert_array_equal(_dependence(memory, 1, (h, q, k, v), T), active & (p == t))
    np.testing.assert_array_equal(
        _dependence(memory, 0, (h, q, k, v), T), in_memory | (active & (p == t))
    )


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_parallel_forward_equals_prefill_and_decode(ahn_type):
    model = make(ahn_type)
    T = 30
    ids = token_ids(T)
    parallel = model(ids, mode="ahn", window=W, sinks=S)
    for split in (3, 13):  # before and after the memory starts
        cache = model.init_cache(2, window=W, sinks=S)
        logits, cache = model.prefill(ids[:, :split], cache, all_logits=True)
        assert max_diff(logits, parallel[:, :split]) <= 1e-5, split
        for t in range(split, T):
            logits, cache = model.decode_step(ids[:, t], cache)
            assert max_diff(logits, parallel[:, t]) <= 1e-5, (split, t)
    for chunk in (7,):  # chunked prefill carries the state between chunks (30 = 7 + ... + 2)
        cache = model.init_cache(2, window=W, sinks=S)
        logits, cache = model.prefill(ids, cache, chunk_size=chunk, all_logits=True)
        assert max_diff(logits, parallel) <= 1e-5, chunk


def test_unstacked_layers_prefill_and_decode_as_the_stacked_model():
    """`unstack_layers` (what generate decodes with on the CPU) gives the same logits; the model
    it came from keeps its stacked layers (its parallel forward still runs)."""
    model = make("gdn")
    unstacked = unstack_layers(model)
    assert isinstance(unstacked.layers, nnx.List) and len(unstacked.layers) == 3
    assert for_decoding(unstacked) is unstacked  # no second copy
    ids = token_ids(12)
    runs = []
    for m in (model, unstacked):
        logits, cache = m.prefill(ids[:, :9], m.init_cache(2, window=W, sinks=S), all_logits=True)
        runs.append((logits, m.decode_step(ids[:, 9], cache)[0]))  # 9 > S + W: memory in use
    for stacked, layerwise in zip(*runs, strict=True):
        assert max_diff(stacked, layerwise) <= 1e-6
    assert max_diff(model(ids, mode="ahn", window=W, sinks=S)[:, :9], runs[0][0]) <= 1e-5


def test_swa_cache_equals_swa_forward_and_full_cache_equals_full():
    model = make("gdn")
    ids = token_ids(20)
    for mode, window, sinks, reference in (
        ("swa", W, S, model(ids, mode="swa", window=W, sinks=S)),
        ("full", 20, 0, model(ids)),
    ):
        cache = model.init_cache(2, window=window, sinks=sinks, mode=mode)
        logits, cache = model.prefill(ids[:, :6], cache, all_logits=True)
        decoded = [model.decode_step(ids[:, t], cache)[0] for t in [6]]
        assert max_diff(logits, reference[:, :6]) <= 1e-5
        assert max_diff(decoded[0], reference[:, 6]) <= 1e-5


def test_decode_loop_runs_inside_jit_and_scan():
    model = make("gdn")
    ids = token_ids(16)
    parallel = model(ids, mode="ahn", window=W, sinks=S)
    graphdef, state = nnx.split(model)
    _, cache = model.prefill(ids[:, :4], model.init_cache(2, window=W, sinks=S))

    @jax.jit
    def loop(cache, tokens_TB):
        def body(cache, token_B):
            logits, cache = model_lib.decode_step(graphdef, state, token_B, cache)
            return cache, logits

        return jax.lax.scan(body, cache, tokens_TB)

    _, logits = loop(cache, ids[:, 4:].T)
    assert max_diff(jnp.moveaxis(logits, 0, 1), parallel[:, 4:]) <= 1e-5


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_cache_size_is_constant(ahn_type):
    config = tiny_config(ahn_type=ahn_type)
    model = init_model(config)
    ids = token_ids(4 * (S + W))
    _, early = model.prefill(ids[:, : S + W], model.init_cache(2, window=W, sinks=S))
    _, late = model.prefill(ids, model.init_cache(2, window=W, sinks=S), chunk_size=5)
    assert early.nbytes() == late.nbytes()
    assert jax.tree.map(jnp.shape, early) == jax.tree.map(jnp.shape, late)
    K, H = config.num_kv_heads, config.head_dim
    # per layer: S + W slots and the one the step writes before evicting (ahn_jax/model/cache.py)
    assert [k.shape for k in late.k] == [(2, K, H, S + W + 1)] * config.num_layers
    assert [v.shape for v in late.v] == [(2, S + W + 1, K, H)] * config.num_layers
    assert [s.shape for s in late.state] == [(2, config.num_heads, 8, 8)] * config.num_layers
    assert late.length.tolist() == [4 * (S + W)] * 2


def test_window_and_sinks_do_not_recompile():
    model = make("gdn")
    ids = token_ids(24)
    model(ids, mode="ahn", window=W, sinks=S)
    before = model_lib.forward._cache_size()
    for window, sinks in ((4, 0), (9, 2), (16, 7)):
        model(ids, mode="ahn", window=window, sinks=sinks)
    assert model_lib.forward._cache_size() == before


def test_full_attention_layers_keep_full_attention():
    ids = token_ids(24)
    everywhere = make("gdn", full_attention_layers=(0, 1, 2))
    assert max_diff(everywhere(ids, mode="ahn", window=W, sinks=S), everywhere(ids)) <= 1e-6
    some = make("gdn", full_attention_layers=(1,))
    assert max_diff(some(ids, mode="ahn", window=W, sinks=S), some(ids)) > 1e-3


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_only_ahn_weights_train_and_only_the_output_projection_at_init(ahn_type):
    model = make(ahn_type, output_init="zeros")
    graphdef, trainable, frozen = nnx.split(model, AhnParam, ...)
    assert all("ahn" in path for path in flat_state(trainable))
    assert not any("ahn" in path for path in flat_state(frozen))
    ids = token_ids(24)
    target = jnp.asarray(np.random.default_rng(2).normal(size=(2, 24, 64)), jnp.float32)

    def loss(trainable):
        merged = nnx.merge(graphdef, trainable, frozen)
        logits = merged.logits(ids, jnp.broadcast_to(jnp.arange(24), ids.shape), mode="ahn",
                               window=jnp.int32(W), sinks=jnp.int32(S))  # fmt: skip
        return jnp.mean((logits - target) ** 2)

    grads = flat_state(jax.grad(loss)(trainable))
    assert set(grads) == set(flat_state(trainable))
    for path, grad in grads.items():
        nonzero = bool(jnp.any(grad != 0))
        assert nonzero == (path[-1] == "o_proj"), path
        assert bool(jnp.all(jnp.isfinite(grad))), path


def test_gdn_without_decay_equals_dn():
    gdn, dn = make("gdn"), make("dn")
    _, gdn_ahn, gdn_base = nnx.split(gdn, AhnParam, ...)
    graphdef, dn_ahn, _ = nnx.split(dn, AhnParam, ...)
    gdn_weights = nnx.to_pure_dict(gdn_ahn)
    dn_weights = nnx.to_pure_dict(dn_ahn)
    for name in dn_weights["layers"]["ahn"]:
        dn_weights["layers"]["ahn"][name] = gdn_weights["layers"]["ahn"][name]
    nnx.replace_by_pure_dict(dn_ahn, dn_weights)
    dn = nnx.merge(graphdef, dn_ahn, gdn_base)
    gdn.layers.ahn.A_log[...] = jnp.full_like(gdn.layers.ahn.A_log[...], -jnp.inf)  # alpha = 1
    ids = token_ids(40)
    gdn_logits = gdn(ids, mode="ahn", window=W, sinks=S)
    assert max_diff(gdn_logits, dn(ids, mode="ahn", window=W, sinks=S)) <= 1e-6
    assert max_diff(gdn_logits, gdn(ids, mode="swa", window=W, sinks=S)) > 1e-3
