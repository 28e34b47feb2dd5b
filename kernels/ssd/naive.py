"""The naive SSD: one `lax.scan` step per token, straight from the math (the oracle), and the
decode step.

  h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t;   y_t = C_t h_t   (per head, fp32 state h [H, E])
"""

from __future__ import annotations

import jax.numpy as jnp

from kernels.common.scan import checkpointed_scan


def ssd_step(x, dt, A, B, C, state):
    """One token: x [B, N, E], dt [B, N], A [N], B, C [B, N, H], state [B, N, H, E] ->
    (y [B, N, E] in x's dtype, new state fp32)."""
    f32 = jnp.float32
    dt = dt.astype(f32)
    decay = jnp.exp(dt * A.astype(f32))
    write = jnp.einsum("bnh,bne->bnhe", B.astype(f32), dt[..., None] * x.astype(f32))
    state = decay[..., None, None] * state.astype(f32) + write
    y = jnp.einsum("bnh,bnhe->bne", C.astype(f32), state, precision="highest")
    return y.astype(x.dtype), state


def recurrent(x, dt, A, B, C, state):
    """The whole sequence by scanning `ssd_step` over T. Returns (y [B, T, N, E] fp32, final
    state)."""

    def body(h, inputs):
        x_t, dt_t, B_t, C_t = inputs
        y, h = ssd_step(x_t, dt_t, A, B_t, C_t, h)
        return h, y

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (x.astype(jnp.float32), dt, B, C))
    final, y = checkpointed_scan(body, state, xs)
    return jnp.moveaxis(y, 0, 1), final
