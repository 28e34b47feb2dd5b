"""Qwen2.5-14B-Instruct with an AHN-GDN memory in every layer (docs/method.md §Shapes)."""

from ahn_jax.config import QWEN25_DEFAULTS, make_config


def get_config():
    model = dict(QWEN25_DEFAULTS, vocab_size=152064, hidden_size=5120, intermediate_size=13824)
    model.update(num_layers=48, num_heads=40, num_kv_heads=8, tie_word_embeddings=False)
    return make_config(model, ahn_type="gdn")
