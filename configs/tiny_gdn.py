"""A CPU-sized, byte-level Qwen2-architecture model (0.85 M parameters) for tests and the demo."""

from ahn_jax.config import make_config


def get_config():
    model = dict(
        vocab_size=256,  # UTF-8 bytes
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=2,
        num_kv_heads=1,
        head_dim=64,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
    )
    return make_config(model, ahn_type="gdn", demo={"seed": 0, "seq_len": 512, "batch_size": 8})
