"""Sink + window attention: the blocked path (the one `causal_attention`, and so the model, runs)
and splash equal the dense reference, forward and backward, for traced W and S."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checks import assert_close

from kernels.window_attention import (
    causal_attention,
    masked_attention,
    sink_window_attention,
    skipping_attention,
    visible,
)


def make_qkv(T, N=4, K=2, H=8, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, T, N, H))
    k, v = rng.standard_normal((2, 2, T, K, H))
    return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


@functools.partial(jax.jit, static_argnames=("impl",))
def attend(impl, q, k, v, window, sinks):
    return sink_window_attention(q, k, v, window=window, sinks=sinks, impl=impl, block_size=16)


def test_mask_semantics_at_the_boundaries():
    S, W = 3, 5
    t, s = np.arange(12)[:, None], np.arange(12)[None, :]
    mask = np.asarray(visible(t, s, W, S))
    assert mask[7, 3] and mask[7, 2]  # t - s = 4 < W; s < S
    assert not mask[8, 3]  # t - s = 5 == W, not a sink: evicted
    assert mask[11, 0] and not mask[11, 4] and mask[11, 7]
    assert not mask[2, 3]  # causal
    # the first evicted token leaves exactly when t = S + W
    assert mask[S + W - 1, S] and not mask[S + W, S]


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_masked_attention_over_key_blocks_equals_the_dense_reference(dtype, tol):
    # the decode cache's layout: keys split into blocks (cache, new tokens), one mask over both
    q, k, v = make_qkv(29, dtype=dtype)
    W, S = 6, 4
    mask = visible(np.arange(29)[:, None], np.arange(29)[None, :], W, S)
    want = sink_window_attention(q, k, v, window=W, sinks=S)  # not `attend`: its compile count
    for cuts in ((), (20,), (3, 17)):
        edges = (0, *cuts, 29)
        blocks = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        # the first block also as the cache stores its keys: slots last, [B, K, H, U]
        for first_slots_last in (False, True):
            k_blocks = [k[:, b] for b in blocks]
            layouts = ["BUKH"] * len(blocks)
            if first_slots_last:
                k_blocks[0], layouts[0] = k_blocks[0].transpose(0, 2, 3, 1), "BKHU"
            got = masked_attention(
                q,
                k_blocks,
                [v[:, b] for b in blocks],
                jnp.broadcast_to(mask, (2, 29, 29)),
                key_layouts=tuple(layouts),
            )
            assert got.dtype == dtype
            np.testing.assert_allclose(np.float32(got), np.float32(want), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="key_layouts"):
        masked_attention(q, k, v, mask, key_layouts=("BHUK",))


def test_masked_attention_in_bf16_rounds_its_output_once():
    """bf16 q, k, v (the decode step's on an accelerator): the weights are rounded to bf16 for
    the product with v (flash-style), everything else is fp32 until the output is rounded once.
    Every output then equals float64's result rounded to bf16; a product rounded to bf16 before
    the division rounded a quarter of them twice."""
    rng = np.random.default_rng(0)
    B, T, U, N, K, H = 2, 4, 256, 4, 2, 64
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
               for shape in ((B, T, N, H), (B, U, K, H), (B, U, K, H)))  # fmt: skip
    got = np.float32(masked_attention(q, [k[:, :200], k[:, 200:]], [v[:, :200], v[:, 200:]],
                                      jnp.ones((T, U), bool)))  # fmt: skip
    qf, kf, vf = (np.asarray(np.float32(x), np.float64) for x in (q, k, v))
    s = np.einsum("BTKGH,BUKH->BKGTU", qf.reshape(B, T, K, N // K, H), kf) * H**-0.5
    w = np.exp(s - s.max(-1, keepdims=True))
    w_bf16 = np.float64(np.float32(jnp.asarray(np.float32(w), jnp.bfloat16)))
    o = np.einsum("BKGTU,BUKH->BTKGH", w_bf16, vf) / w.sum(-1).transpose(0, 3, 1, 2)[..., None]
    once = np.float32(jnp.asarray(np.float32(o.reshape(B, T, N, H)), jnp.bfloat16))
    np.testing.assert_array_equal(got, once)


@pytest.mark.parametrize("block", [4, 5, 40])  # 20 slots: whole blocks, a shorter last one, one
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_skipping_attention_equals_masked_attention(block, dtype, tol):
    """A full-attention cache being prefilled: 20 slots of which each row has filled its first
    few (0, 7, 13), a chunk of 6 new tokens per row; the slots past a row's fill (whole blocks of
    them, for some rows all) are skipped, the scores of the rest folded in block by block."""
    B, C, P, N, K, H = 3, 20, 6, 4, 2, 8
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((B, P, N, H)), dtype)
    shapes = ((B, K, H, C), (B, C, K, H))  # the cache's layouts: keys slots last
    cache_k, cache_v = (jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)
    new_k, new_v = (jnp.asarray(rng.standard_normal((B, P, K, H)), dtype) for _ in range(2))
    filled = np.array([0, 7, 13])
    mask = np.zeros((B, P, C + P), bool)
    for b, n in enumerate(filled):
        mask[b, :, :n] = rng.random((P, n)) < 0.8  # some filled slots hidden too (a window)
        mask[b, :, C:] = np.tril(np.ones((P, P), bool))
    want = masked_attention(q, (cache_k, new_k), (cache_v, new_v), mask,
                            key_layouts=("BKHU", "BUKH"))  # fmt: skip
    got = jax.jit(functools.partial(skipping_attention, block=block))(
        q, cache_k, cache_v, new_k, new_v, mask
    )
    assert got.dtype == dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=tol, rtol=tol)


@pytest.mark.parametrize("W, S", [(5, 3), (16, 0), (40, 20), (1, 1), (33, 17), (7, 20)])
def test_blocked_equals_reference(W, S):
    q, k, v = make_qkv(77)
    assert_close(attend("blocked", q, k, v, W, S), attend("reference", q, k, v, W, S))
    # one compile serves every (W, S): they are traced
    assert attend._cache_size() <= 2


def test_blocked_sinks_across_a_block_edge_in_a_padded_sequence():
    # the 18 sinks fill the first 16-block and reach into the second, which T = 25 leaves padded
    q, k, v = make_qkv(25)
    assert_close(attend("blocked", q, k, v, 5, 18), attend("reference", q, k, v, 5, 18))


def test_blocked_gradients_equal_reference():
    q, k, v = make_qkv(45)

    def loss(impl):
        return lambda q, k, v: jnp.sum(jnp.sin(attend(impl, q, k, v, 9, 4)))

    want = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(loss("blocked"), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        assert_close(a, b, name=f"d{name}")


def test_reference_equals_plain_causal_when_window_covers_everything():
    q, k, v = make_qkv(20, N=2, K=2)
    out = sink_window_attention(q, k, v, window=20, sinks=0)
    scores = jnp.einsum("btnd,bsnd->bnts", q, k) * 8**-0.5
    scores = jnp.where(np.tril(np.ones((20, 20), bool)), scores, -jnp.inf)
    want = jnp.einsum("bnts,bsnd->btnd", jax.nn.softmax(scores, -1), v)
    assert_close(out, want)


def test_blocked_takes_any_window_and_sinks_concrete_or_traced():
    """No static bounds: a window or a sink prefix longer than the sequence, concrete or traced,
    gives the reference's result (the removed static-bound path cut such windows)."""
    q, k, v = make_qkv(10)
    traced = jax.jit(
        lambda w, s: sink_window_attention(q, k, v, window=w, sinks=s, impl="blocked", block_size=4)
    )
    for W, S in ((50, 0), (4, 30), (3, 2)):
        want = sink_window_attention(q, k, v, window=W, sinks=S)
        got = sink_window_attention(q, k, v, window=W, sinks=S, impl="blocked", block_size=4)
        assert_close(got, want, name=f"W={W} S={S}")
        assert_close(traced(W, S), want, name=f"traced W={W} S={S}")


@pytest.mark.parametrize("impl", ["blocked", "splash"])
def test_value_dim_may_differ_from_the_key_dim(impl):
    q, k, _ = make_qkv(40)
    v = jnp.asarray(np.random.default_rng(1).standard_normal((2, 40, 2, 12)), jnp.float32)
    got = sink_window_attention(q, k, v, window=9, sinks=3, impl=impl, block_size=16)
    assert got.shape == (2, 40, 4, 12)
    assert_close(got, sink_window_attention(q, k, v, window=9, sinks=3))


def test_splash_equals_reference_forward_and_backward():
    """Splash with the fused sink-or-local mask (interpret mode on CPU), T padded to 128."""
    q, k, v = make_qkv(150)

    def loss(impl):
        return lambda q, k, v: jnp.sum(
            jnp.sin(sink_window_attention(q, k, v, window=37, sinks=5, impl=impl))
        )

    out = sink_window_attention(q, k, v, window=37, sinks=5, impl="splash")
    assert_close(out, sink_window_attention(q, k, v, window=37, sinks=5))
    want = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        assert_close(a, b, name=f"d{name}")


def test_splash_needs_static_window():
    q, k, v = make_qkv(8)
    with pytest.raises(ValueError, match="window is traced"):
        jax.jit(lambda w: sink_window_attention(q, k, v, window=w, sinks=0, impl="splash"))(4)


@pytest.mark.parametrize("impl", ["blocked", "splash"])
def test_bf16_inputs_within_fla_thresholds(impl):
    q, k, v = make_qkv(130, dtype=jnp.bfloat16)
    want = sink_window_attention(*(x.astype(jnp.float32) for x in (q, k, v)), window=33, sinks=5)
    got = sink_window_attention(q, k, v, window=33, sinks=5, impl=impl, block_size=16)
    assert got.dtype == jnp.bfloat16
    assert_close(got, want, tol=0.005)


# causal_attention: the entry point the model calls (one block up to `block`, blocks beyond)


def _qkv(T, N=4, K=2, H=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (2, T, N, H)),
        jax.random.normal(keys[1], (2, T, K, H)),
        jax.random.normal(keys[2], (2, T, K, H)),
    )


def _dense(q, k, v):
    return sink_window_attention(q, k, v, window=q.shape[1], sinks=0)


@pytest.mark.parametrize(
    "T, block, heads", [(37, 8, (4, 2)), (64, 16, (4, 4)), (50, 16, (4, 1)), (13, 16, (4, 2))]
)
def test_causal_attention_blocked_equals_dense(T, block, heads):
    q, k, v = _qkv(T, N=heads[0], K=heads[1])
    blocked = causal_attention(q, k, v, block=block)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(_dense(q, k, v)), atol=2e-6)


def test_causal_attention_blocked_gradients_equal_dense():
    q, k, v = _qkv(45)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    dense = jax.grad(loss(_dense), argnums=(0, 1, 2))(q, k, v)
    blocked = jax.grad(loss(lambda q, k, v: causal_attention(q, k, v, block=8)), (0, 1, 2))(q, k, v)
    for a, b in zip(dense, blocked, strict=True):
        assert np.all(np.isfinite(np.asarray(b)))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-5)


def test_causal_attention_is_causal():
    """Changing a later token never changes an earlier output."""
    q, k, v = _qkv(40)
    out = causal_attention(q, k, v, block=8)
    k2, v2 = k.at[:, 30].add(5.0), v.at[:, 30].add(5.0)
    out2 = causal_attention(q, k2, v2, block=8)
    np.testing.assert_array_equal(np.asarray(out[:, :30]), np.asarray(out2[:, :30]))
    assert not np.allclose(np.asarray(out[:, 30:]), np.asarray(out2[:, 30:]))


@pytest.mark.parametrize("window, sinks", [(5, 3), (8, 0), (17, 9), (1, 0), (45, 0)])
def test_causal_attention_sink_window_equals_reference_with_traced_bounds(window, sinks):
    """The decoder's windowed path: W and S traced, one compile for all of them, and blocks
    outside the sink prefix and the window band skipped without changing the result."""
    q, k, v = _qkv(45)
    blocked = jax.jit(lambda q, k, v, w, s: causal_attention(q, k, v, block=8, window=w, sinks=s))

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    def reference(q, k, v):
        return sink_window_attention(q, k, v, window=window, sinks=sinks)

    def ours(q, k, v):
        return blocked(q, k, v, jnp.int32(window), jnp.int32(sinks))

    np.testing.assert_allclose(np.asarray(ours(q, k, v)), np.asarray(reference(q, k, v)), atol=2e-6)
    for a, b in zip(
        jax.grad(loss(reference), (0, 1, 2))(q, k, v),
        jax.grad(loss(ours), (0, 1, 2))(q, k, v),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-5)


# the model's own blocks: a forward block of min(512, T) and the written-out backward's 128, with T
# a multiple of neither, W and S on the backward's block edges, scalar and per row


@pytest.mark.parametrize("T", [300, 700])
@pytest.mark.parametrize(
    "window, sinks",
    [(None, 0), (128, 0), (129, 127), ((128, 5, 700, 1), (0, 127, 3, 256))],
)
def test_default_blocks_equal_reference_forward_and_backward(T, window, sinks):
    q, k, v = _rows(T, 4, seed=2)
    if window is not None:
        window, sinks = jnp.asarray(window, jnp.int32), jnp.asarray(sinks, jnp.int32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    def ours(q, k, v):
        return causal_attention(q, k, v, window=window, sinks=sinks)

    def reference(q, k, v):
        return sink_window_attention(q, k, v, window=T if window is None else window, sinks=sinks)

    assert_close(ours(q, k, v), reference(q, k, v))
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        assert_close(a, b, name=f"d{name}")


def test_bf16_gradients_within_fla_thresholds():
    """bf16 q, k, v: the backward computes in fp32 and returns bf16 gradients near the fp32 ones."""
    q, k, v = make_qkv(200, dtype=jnp.bfloat16)

    def grads(q, k, v):
        def loss(q, k, v):
            out = causal_attention(q, k, v, window=70, sinks=4)
            return jnp.sum(jnp.sin(out.astype(jnp.float32)))

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    want = grads(*(x.astype(jnp.float32) for x in (q, k, v)))
    got = grads(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        assert a.dtype == jnp.bfloat16
        assert_close(a, b, tol=0.01, name=f"d{name}")


# per-row windows and sinks: W and S as int32 [B], each row as if called alone

# T = 77 in blocks of 16: windows and sink counts at block edges (16, 32, 15, 17), S = 0, W >= T,
# a one-token window and a sink prefix past the sequence, side by side in one batch
ROW_WINDOWS = (16, 5, 77, 100, 1, 33, 9)
ROW_SINKS = (0, 16, 0, 3, 32, 17, 90)


def _rows(T, B, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, 4, 8))
    k, v = rng.standard_normal((2, B, T, 2, 8))
    return tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v))


@pytest.mark.parametrize("impl", ["reference", "blocked"])
def test_per_row_window_and_sinks_equal_each_row_alone(impl):
    q, k, v = _rows(77, len(ROW_WINDOWS))
    windows, sinks = jnp.asarray(ROW_WINDOWS, jnp.int32), jnp.asarray(ROW_SINKS, jnp.int32)
    got = attend(impl, q, k, v, windows, sinks)
    for b, (W, S) in enumerate(zip(ROW_WINDOWS, ROW_SINKS, strict=True)):
        alone = attend("reference", q[b : b + 1], k[b : b + 1], v[b : b + 1], W, S)
        assert_close(got[b : b + 1], alone, name=f"{impl} row {b}: W={W} S={S}")


def test_per_row_blocked_equals_reference_forward_and_backward_with_one_compile():
    q, k, v = _rows(77, 4, seed=1)
    draws = [((16, 1, 77, 31), (0, 16, 0, 2)), ((5, 48, 2, 17), (17, 0, 33, 15))]

    def loss(impl, windows, sinks):
        return lambda q, k, v: jnp.sum(jnp.sin(attend(impl, q, k, v, windows, sinks)))

    attend("blocked", q, k, v, jnp.zeros(4, jnp.int32) + 3, jnp.zeros(4, jnp.int32))
    compiled = attend._cache_size()
    for windows, sinks in draws:
        windows, sinks = jnp.asarray(windows, jnp.int32), jnp.asarray(sinks, jnp.int32)
        assert_close(
            attend("blocked", q, k, v, windows, sinks),
            attend("reference", q, k, v, windows, sinks),
        )
        want = jax.grad(loss("reference", windows, sinks), argnums=(0, 1, 2))(q, k, v)
        got = jax.grad(loss("blocked", windows, sinks), argnums=(0, 1, 2))(q, k, v)
        for name, a, b in zip("qkv", got, want, strict=True):
            assert_close(a, b, name=f"d{name}")
    # the forward of every draw ran the one blocked program (the reference compiled its own)
    assert attend._cache_size() == compiled + 1


def test_causal_attention_takes_per_row_bounds():
    q, k, v = _rows(45, 3, seed=2)
    windows, sinks = jnp.asarray([8, 3, 45], jnp.int32), jnp.asarray([0, 9, 2], jnp.int32)
    got = causal_attention(q, k, v, block=8, window=windows, sinks=sinks)
    for b in range(3):
        alone = sink_window_attention(
            q[b : b + 1], k[b : b + 1], v[b : b + 1], window=int(windows[b]), sinks=int(sinks[b])
        )
        assert_close(got[b : b + 1], alone, name=f"row {b}")


def test_per_row_bounds_are_checked_and_splash_takes_one_pair():
    q, k, v = make_qkv(8)
    with pytest.raises(ValueError, match=r"window must be a scalar or one value per row \(2,\)"):
        sink_window_attention(q, k, v, window=jnp.asarray([4, 5, 6]), sinks=0, impl="blocked")
    with pytest.raises(ValueError, match="impl='splash' takes one window for the whole batch"):
        sink_window_attention(q, k, v, window=np.asarray([4, 5]), sinks=0, impl="splash")
    with pytest.raises(ValueError, match="impl='splash' takes one sinks"):
        sink_window_attention(q, k, v, window=4, sinks=jnp.asarray([1, 2]), impl="splash")
