"""The oracles' token-by-token scan, rematerialised by segments (the delta rule and SSD use it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def checkpointed_scan(body, init, xs, segment: int = 64):
    """`lax.scan(body, init, xs)` over the leading axis, rematerialised by segments.

    Reverse-mode AD of a plain scan keeps every step's carry; for these recurrences that is a whole
    [B, N, H, E] state per token (1 MiB per token at N = 16, H = E = 128). Here only one carry per
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
