"""Mamba2 SSD: chunked, batched (and Pallas) equal the naive scan, with gradients; the batched form
scans only the state; the step equals the scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checks import assert_close
from test_delta_rule import assert_thin_scans

from kernels.ssd import ssd, ssd_step

ARGNAMES = ("x", "dt", "A", "B", "C", "initial_state")
FAST_IMPLS = ("chunked", "batched")  # the XLA chunked forms


def make_inputs(T, *, b=2, N=3, H=16, E=8, dt_scale=1.0, seed=0):
    """x [b, T, N, E], dt [b, T, N], A [N], the inputs B and C [b, T, N, H], state [b, N, H, E]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, T, N, E))
    dt = dt_scale * np.log1p(np.exp(rng.standard_normal((b, T, N))))
    A = -np.exp(rng.standard_normal(N))
    B, C = rng.standard_normal((2, b, T, N, H))
    state = rng.standard_normal((b, N, H, E))
    return tuple(jnp.asarray(a, jnp.float32) for a in (x, dt, A, B, C, state))


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size", "with_state"))
def run(impl, inputs, chunk_size=32, with_state=True):
    x, dt, A, B, C, state = inputs
    return ssd(x, dt, A, B, C, initial_state=state if with_state else None,
               output_final_state=True, chunk_size=chunk_size, impl=impl)  # fmt: skip


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize(
    "T, chunk, dt_scale, with_state",
    [
        (20, 256, 1.0, True),
        (70, 32, 1.0, False),
        (64, 16, 1e-4, True),
        (50, 16, 30.0, True),
        (300, 256, 30.0, True),
        (300, 256, 1e-4, False),
    ],  # several decay blocks per chunk
)
def test_chunked_equals_recurrent(T, chunk, dt_scale, with_state, impl):
    inputs = make_inputs(T, dt_scale=dt_scale)
    y_ref, s_ref = run("recurrent", inputs, with_state=with_state)
    y, s = run(impl, inputs, chunk, with_state)
    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="state")


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def grads(impl, inputs, chunk_size=16):
    """The VJP for fixed random cotangents of y and the final state. (A loss like sum(sin(y))
    would also compare the forwards: with dt_scale 30, |y| reaches hundreds, and the two forms'
    fp32 rounding of y, within tolerance, moves cos(y) by more than 1e-5.)"""
    rng = np.random.default_rng(7)
    x, state = inputs[0], inputs[5]
    y_bar = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    state_bar = jnp.asarray(rng.standard_normal(state.shape), jnp.float32)

    def loss(*args):
        y, final = run(impl, args, chunk_size)
        return jnp.sum(y * y_bar) + jnp.sum(final * state_bar)

    return jax.grad(loss, argnums=tuple(range(6)))(*inputs)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("T, chunk, dt_scale", [(45, 16, 1.0), (150, 64, 30.0), (150, 64, 1.0)])
def test_chunked_gradients_equal_recurrent(T, chunk, dt_scale, impl):
    inputs = make_inputs(T, dt_scale=dt_scale)
    for name, got, want in zip(ARGNAMES, grads(impl, inputs, chunk),
                               grads("recurrent", inputs), strict=True):  # fmt: skip
        assert_close(got, want, name=f"d{name}")


def test_step_chains_to_the_scan():
    x, dt, A, B, C, state = make_inputs(5)
    y_ref, s_ref = run("recurrent", (x, dt, A, B, C, state))
    s = state
    for t in range(5):
        y, s = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], s)
        assert_close(y, y_ref[:, t], name=f"y[{t}]")
    assert_close(s, s_ref, name="state")


def test_bad_shapes():
    x, dt, A, B, C, _ = make_inputs(8)
    with pytest.raises(ValueError, match="impl must be one of"):
        ssd(x, dt, A, B, C, impl="fast")
    with pytest.raises(ValueError, match="B and C must both be"):
        ssd(x, dt, A, B, C[..., :3])


def test_pallas_equals_recurrent_forward_and_backward():
    inputs = make_inputs(40)
    y_ref, s_ref = run("recurrent", inputs)
    y, s = run("pallas", inputs, 16)
    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="state")
    for name, got, want in zip(ARGNAMES, grads("pallas", inputs), grads("recurrent", inputs),
                               strict=True):  # fmt: skip
        assert_close(got, want, name=f"d{name}")


def test_bf16_inputs_within_fla_thresholds():
    inputs = make_inputs(50)
    bf16 = tuple(x.astype(jnp.bfloat16) for x in inputs[:5]) + (inputs[5],)
    y_ref, s_ref = run("recurrent", tuple(x.astype(jnp.float32) for x in bf16))
    for impl in ("chunked", "batched", "pallas"):
        y, s = run(impl, bf16, 16)
        assert y.dtype == jnp.bfloat16
        assert_close(y, y_ref, tol=0.005, name=f"{impl} y")
        assert_close(s, s_ref, tol=0.005, name=f"{impl} state")


def test_batched_scans_only_the_state():
    """One scan over the chunks forward and one backward (its transpose), none holding [C, C]
    intra-chunk work (C = 32 differs from every other dim here)."""
    inputs = make_inputs(100)

    def loss(*args):
        y, final = run("batched", args, 32)
        return jnp.sum(y) + jnp.sum(final)

    assert_thin_scans(loss, inputs, n_scans=1, Q=4, C=32)
    assert_thin_scans(jax.grad(loss, argnums=tuple(range(6))), inputs, n_scans=2, Q=4, C=32)
