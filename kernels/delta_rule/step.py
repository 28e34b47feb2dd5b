"""One token of the gated delta rule in two passes over the state: the decode step.

The oracle (`naive.step`) follows the math and walks the state [B, N, H, E] four times: decay,
k·S, the rank-one write and q·S. Decoding reads and writes every layer's state once per token, so
the same step is regrouped around the old state S and a = exp(g):
  [q S; k S] in one product,  u = beta (v - a k S),  S' = a S + k^T u,  o = scale (a q S + (q·k) u)
(q S' = a q S + (q·k) u). One product reads S and one elementwise pass writes S'. Equal to
`naive.step` up to rounding (tests/test_kernels/test_delta_rule.py).
"""

from __future__ import annotations

import jax.numpy as jnp


def step(q_BNH, k_BNH, v_BNE, g_BN, beta_BN, state_BNHE, scale: float):
    """One token, everything in fp32. Returns (o [B, N, E], new state [B, N, H, E])."""
    f32 = jnp.float32
    q, k, v = q_BNH.astype(f32), k_BNH.astype(f32), v_BNE.astype(f32)
    decay = jnp.exp(g_BN.astype(f32))[..., None]  # [B, N, 1]
    read = jnp.einsum(
        "BNJH,BNHE->BNJE", jnp.stack([q, k], axis=2), state_BNHE, precision="highest"
    )  # fmt: skip
    q_state, k_state = read[:, :, 0], read[:, :, 1]
    u = beta_BN.astype(f32)[..., None] * (v - decay * k_state)
    state = decay[..., None] * state_BNHE + k[..., :, None] * u[..., None, :]
    qk = jnp.sum(q * k, axis=-1, keepdims=True)
    return scale * (decay * q_state + qk * u), state
