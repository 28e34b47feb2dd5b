"""The gated delta rule with the Pallas inter-chunk scan: the state-free terms of all chunks at once
in XLA (`batched.chunk_terms`, shared with impl="batched"), then the state scan as a Pallas TPU
kernel (kernels/common/inter_chunk_pallas.py; interpret mode off TPU)."""

from __future__ import annotations

from kernels.common import inter_chunk_pallas
from kernels.delta_rule import batched


def chunked_pallas(q, k, v, g, beta, initial_state, scale, chunk_size, precision):
    """q, k already normalised if asked. Returns (o [B, T, N, E] fp32, final state [B, N, H, E])."""
    return batched.batched(q, k, v, g, beta, initial_state, scale, chunk_size, precision,
                           scan=inter_chunk_pallas.inter_chunk_scan)  # fmt: skip
