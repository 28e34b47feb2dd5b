"""The naive (gated) delta rule: one `lax.scan` step per token, straight from the math.

Per head, row-vector convention, fp32 state S [H, E]:
  S <- exp(g_t) S;  u_t = beta_t (v_t - k_t S);  S <- S + k_t^T u_t;  o_t = scale q_t S.
This is the oracle every other implementation is tested against, the decode step's too
(`step.py` regroups one token of it into two passes over the state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common.scan import checkpointed_scan


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / sqrt(|x|^2 + eps) over the last axis, in fp32 (fla's in-kernel q/k l2norm)."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)


def step(q_BNH, k_BNH, v_BNE, g_BN, beta_BN, state_BNHE, scale: float):
    """One token of the gated delta rule; everything in fp32. Returns (o [B, N, E], new state)."""
    f32 = jnp.float32
    q, k, v = q_BNH.astype(f32), k_BNH.astype(f32), v_BNE.astype(f32)
    state = state_BNHE * jnp.exp(g_BN.astype(f32))[..., None, None]
    predicted = jnp.einsum("BNH,BNHE->BNE", k, state, precision="highest")
    u = beta_BN.astype(f32)[..., None] * (v - predicted)
    state = state + jnp.einsum("BNH,BNE->BNHE", k, u, precision="highest")
    o = scale * jnp.einsum("BNH,BNHE->BNE", q, state, precision="highest")
    return o, state


def recurrent(q, k, v, g, beta, initial_state, scale: float):
    """The whole sequence by scanning `step` over T. Returns (o [B, T, N, E] fp32, final state)."""

    def body(state, inputs):
        o, state = step(*inputs, state, scale)
        return state, o

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
    final, o_TBNE = checkpointed_scan(body, initial_state, xs)
    return jnp.moveaxis(o_TBNE, 0, 1), final
