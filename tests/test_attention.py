"""The blocked causal attention equals the dense reference, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.window_attention import causal_attention, sink_window_attention


def _qkv(T, N=4, K=2, H=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (2, T, N, H)),
        jax.random.normal(keys[1], (2, T, K, H)),
        jax.random.normal(keys[2], (2, T, K, H)),
    )


def _dense(q, k, v):
    return sink_window_attention(q, k, v, window=q.shape[1], sinks=0)


@pytest.mark.parametrize("T, block, heads", [(37, 8, (4, 2)), (64, 16, (4, 4)), (50, 16, (4, 1))])
def test_blocked_equals_dense(T, block, heads):
    q, k, v = _qkv(T, N=heads[0], K=heads[1])
    blocked = causal_attention(q, k, v, block=block)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(_dense(q, k, v)), atol=2e-6)


def test_blocked_gradients_equal_dense():
    q, k, v = _qkv(45)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    dense = jax.grad(loss(_dense), argnums=(0, 1, 2))(q, k, v)
    blocked = jax.grad(loss(lambda q, k, v: causal_attention(q, k, v, block=8)), (0, 1, 2))(q, k, v)
    for a, b in zip(dense, blocked, strict=True):
        assert np.all(np.isfinite(np.asarray(b)))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-5)


def test_causality():
    """Changing a later token never changes an earlier output."""
    q, k, v = _qkv(40)
    out = causal_attention(q, k, v, block=8)
    k2, v2 = k.at[:, 30].add(5.0), v.at[:, 30].add(5.0)
    out2 = causal_attention(q, k2, v2, block=8)
    np.testing.assert_array_equal(np.asarray(out[:, :30]), np.asarray(out2[:, :30]))
    assert not np.allclose(np.asarray(out[:, 30:]), np.asarray(out2[:, 30:]))


@pytest.mark.parametrize("window, sinks", [(5, 3), (8, 0), (17, 9), (1, 0), (45, 0)])
def test_blocked_sink_window_equals_reference_with_traced_bounds(window, sinks):
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
