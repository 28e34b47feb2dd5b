"""The naive (gated) delta rule: one `lax.scan` step per token, straight from the math.

Per head, row-vector convention, fp32 state S [K, V]:
  S <- exp(g_t) S;  u_t = beta_t (v_t - k_t S);  S <- S + k_t^T u_t;  o_t = scale q_t S.
This is the oracle every other implementation is tested against, and the decode step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / sqrt(|x|^2 + eps) over the last axis, in fp32 (fla's in-kernel q/k l2norm)."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)


def step(q_BHK, k_BHK, v_BHV, g_BH, beta_BH, state_BHKV, scale: float):
    """One token of the gated delta rule; everything in fp32. Returns (o [B,H,V], new state)."""
    f32 = jnp.float32
    q, k, v = q_BHK.astype(f32), k_BHK.astype(f32), v_BHV.astype(f32)
    state = state_BHKV * jnp.exp(g_BH.astype(f32))[..., None, None]
    predicted = jnp.einsum("BHK,BHKV->BHV", k, state, precision="highest")
    u = beta_BH.astype(f32)[..., None] * (v - predicted)
    state = state + jnp.einsum("BHK,BHV->BHKV", k, u, precision="highest")
    o = scale * jnp.einsum("BHK,BHKV->BHV", q, state, precision="highest")
    return o, state


def checkpointed_scan(body, init, xs, segment: int = 64):
    """`lax.scan(body, init, xs)` over the leading axis, rematerialised by segments.

    Reverse-mode AD of a plain scan keeps every step's carry; for these recurrences that is a whole
    [B, H, K, V] state per token (1 MiB per token at H=16, K=V=128). Here only one carry per
    `segment` steps is kept and the steps inside a segment are recomputed in the backward pass.
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    main = T - T % segment
    outputs = []
    carry = init
    if main:

        @jax.checkpoint
        def segment_body(carry, seg_xs):
            return jax.lax.scan(body, carry, seg_xs)

        seg_xs = jax.tree.map(
            lambda x: x[:main].reshape(main // segment, segment, *x.shape[1:]), xs
        )
        carry, ys = jax.lax.scan(segment_body, carry, seg_xs)
        outputs.append(jax.tree.map(lambda y: y.reshape(main, *y.shape[2:]), ys))
    if main < T:
        carry, ys = jax.lax.scan(body, carry, jax.tree.map(lambda x: x[main:], xs))
        outputs.append(ys)
    ys = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=0), *outputs)
    return carry, ys


def recurrent(q, k, v, g, beta, initial_state, scale: float):
    """The whole sequence by scanning `step` over T. Returns (o [B,T,H,V] fp32, final state)."""

    def body(state, inputs):
        o, state = step(*inputs, state, scale)
        return state, o

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
    final, o_TBHV = checkpointed_scan(body, initial_state, xs)
    return jnp.moveaxis(o_TBHV, 0, 1), final
