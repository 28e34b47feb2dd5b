"""Pure-JAX kernels (no flax, nothing from ahn_jax): delta rule, gated delta rule, Mamba2 SSD and
sink+window attention, each with a naive oracle, a chunked/blocked path and Pallas TPU kernels.

The ops arrive with the kernels issue; this package exists so that the layout of design.md is in
place and `ahn_jax` never grows kernel code of its own.
"""
