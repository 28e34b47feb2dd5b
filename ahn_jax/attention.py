"""The attention op the decoder calls, dispatched to `kernels/` implementations.

Mode "full" is plain causal attention; the sink+window modes of the AHN issue add their dispatch
(kernels.window_attention.sink_window_attention) here, so the decoder never builds a mask itself.
"""

from __future__ import annotations

import jax

from kernels import window_attention

BLOCK = 512  # query/key block of the blocked path; sequences up to one block use the dense path


def causal_attention(q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array) -> jax.Array:
    return window_attention.causal_attention(q_BTNH, k_BTKH, v_BTKH, block=BLOCK)
