"""Pure-JAX kernels of AHN (no flax, nothing from ahn_jax; tests/test_kernels/test_independence.py).

Three families, each a package split the same way (as fla's `ops/<family>/`): `naive` (the oracle,
straight from the math), `chunked` (`blocked` for attention; the fast XLA form on CPU), `pallas`
(the Pallas form), and an `__init__` with the public entry points, which dispatch by `impl`. The
delta rule and SSD also have `batched` (impl="batched"), the XLA form shaped for accelerators: all
chunks' state-free terms at once (shared with `pallas`) and only the state scanned over chunks:

- `delta_rule`: gated delta rule and delta rule (`gated_delta_rule`, `delta_rule`) + decode step
  (`gated_delta_rule_step`)
- `ssd`: Mamba2's state-space dual recurrence (`ssd`) + decode step (`ssd_step`)
- `window_attention`: sink + sliding-window causal attention (`sink_window_attention`,
  `causal_attention`, `masked_attention`, the mask `visible`)

`common` holds what they share: the chunk math (`chunking`), the inter-chunk state scan of the
delta rule and SSD in XLA (`inter_chunk_xla`) and in Pallas (`inter_chunk_pallas`), the oracles'
checkpointed scan (`scan`), the mask value (`masking.MASKED`), shard_map carries (`varying`),
`pallas_mode` and `tpu_aot`.

Shape letters: docs/method.md §Shapes. The math, what is tested where and known issues:
docs/kernels.md.
"""
