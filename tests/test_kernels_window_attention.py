"""Sink + window attention: the blocked path equals the dense reference for traced W and S."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_checks import assert_close

from kernels.window_attention import sink_window_attention, visible


def make_qkv(T, N=4, K=2, D=8, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, T, N, D))
    k, v = rng.standard_normal((2, 2, T, K, D))
    return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


@functools.partial(jax.jit, static_argnames=("impl",))
def attend(impl, q, k, v, window, sinks):
    return sink_window_attention(q, k, v, window=window, sinks=sinks, impl=impl,
                                 max_window=40, max_sinks=20, block_size=16)  # fmt: skip


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


@pytest.mark.parametrize("W, S", [(5, 3), (16, 0), (40, 20), (1, 1), (33, 17), (7, 20)])
def test_blocked_equals_reference(W, S):
    q, k, v = make_qkv(77)
    assert_close(attend("blocked", q, k, v, W, S), attend("reference", q, k, v, W, S))
    # one compile serves every (W, S): they are traced
    assert attend._cache_size() <= 2


def test_blocked_sequence_shorter_than_the_sink_blocks():
    # max_sinks = 20 rounds up to two 16-blocks (32 keys) while T is 25
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


def test_bounds_are_checked():
    q, k, v = make_qkv(10)
    with pytest.raises(ValueError, match="exceeds its static bound"):
        sink_window_attention(q, k, v, window=50, sinks=0, impl="blocked", max_window=40)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda w: sink_window_attention(q, k, v, window=w, sinks=0, impl="blocked"))(4)


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
