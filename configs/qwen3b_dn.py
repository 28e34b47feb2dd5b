"""Qwen2.5-3B-Instruct with an AHN-DN memory in every layer (docs/method.md §Shapes).

Training needs the base's weights and the data (the run stops at once, naming them, without):

  python -m ahn_jax.train --config=configs/qwen3b_dn.py \\
      --config.train.base_checkpoint=/path/Qwen2.5-3B-Instruct \\
      --config.data.paths=/path/chatqa2.jsonl
"""

from ahn_jax.config import QWEN25_DEFAULTS, REFERENCE_MAX_GRAD_NORM, make_config


def get_config():
    model = dict(QWEN25_DEFAULTS, vocab_size=151936, hidden_size=2048, intermediate_size=11008)
    model.update(num_layers=36, num_heads=16, num_kv_heads=2, tie_word_embeddings=True)
    # the reference's `--max_samples 100000` and its effective clipping (the other data and train
    # defaults are its recipe)
    train = {"max_grad_norm": REFERENCE_MAX_GRAD_NORM}
    return make_config(model, ahn_type="dn", train=train, data={"max_samples": 100_000})
