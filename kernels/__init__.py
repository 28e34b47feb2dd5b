"""Pure-JAX kernels of AHN (no flax, nothing from ahn_jax), layout [B, T, H, D]:

- `delta_rule`: gated delta rule and delta rule (oracle, chunked WY form, Pallas scan) + decode step
- `ssd`: Mamba2's state-space dual recurrence (oracle, chunked, Pallas scan) + decode step
- `window_attention`: sink + sliding-window causal attention (dense, blocked, splash)

See docs/kernels.md for the math, what is tested where, and known issues.
"""
