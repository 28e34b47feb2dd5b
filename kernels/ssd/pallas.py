"""The SSD with the Pallas inter-chunk scan: the state-free terms of all chunks at once in XLA
(`batched.chunk_terms`, shared with impl="batched"), then the same Pallas state scan as the delta
rule without the delta correction (no w; kernels/common/inter_chunk_pallas.py; interpret mode off
TPU)."""

from __future__ import annotations

from kernels.common import inter_chunk_pallas
from kernels.ssd import batched


def chunked_pallas(x, dt, A, B, C, state, chunk_size, precision):
    """Returns (y [B, T, N, E] fp32, final state [B, N, H, E])."""
    return batched.batched(x, dt, A, B, C, state, chunk_size, precision,
                           scan=inter_chunk_pallas.inter_chunk_scan)  # fmt: skip
