"""Qwen2.5-7B-Instruct with an AHN-GDN memory in every layer (docs/method.md §Shapes)."""

from ahn_jax.config import QWEN25_DEFAULTS, make_config


def get_config():
    model = dict(QWEN25_DEFAULTS, vocab_size=152064, hidden_size=3584, intermediate_size=18944)
    model.update(num_layers=28, num_heads=28, num_kv_heads=4, tie_word_embeddings=False)
    return make_config(model, ahn_type="gdn")
