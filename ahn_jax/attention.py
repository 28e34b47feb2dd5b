"""The attention op the decoder's parallel forward calls, dispatched to `kernels/`.

Query t sees key s iff s <= t and (t - s < window or s < sinks) (ahn_spec §1.2); `window=None` is
plain causal attention. W and S may be traced: one compile serves every value.
"""

from __future__ import annotations

import jax

from kernels import window_attention

BLOCK = 512  # query/key block of the blocked path; sequences up to one block use the dense path


def causal_attention(
    q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, *, window=None, sinks=0
) -> jax.Array:
    return window_attention.causal_attention(
        q_BTNH, k_BTKH, v_BTKH, block=BLOCK, window=window, sinks=sinks
    )
