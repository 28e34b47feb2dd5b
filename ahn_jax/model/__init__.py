"""The model: Qwen2 layers, the AHN memories, the decoder and its modes, the constant-size
cache, logical-axis sharding. Imports only ahn_jax.config and kernels/."""
