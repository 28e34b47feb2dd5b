"""Qwen2.5-7B-Instruct with an AHN-GDN memory in every layer (docs/method.md §Shapes).

Training needs the base's weights and the data (the run stops at once, naming them, without):

  python -m ahn_jax.train --config=configs/qwen7b_gdn.py \\
      --config.train.base_checkpoint=/path/Qwen2.5-7B-Instruct \\
      --config.data.paths=/path/chatqa2.jsonl
"""

from ahn_jax.config import QWEN25_DEFAULTS, REFERENCE_MAX_GRAD_NORM, make_config


def get_config():
    model = dict(QWEN25_DEFAULTS, vocab_size=152064, hidden_size=3584, intermediate_size=18944)
    model.update(num_layers=28, num_heads=28, num_kv_heads=4, tie_word_embeddings=False)
    # the reference's `--max_samples 100000` and its effective clipping (the other data and train
    # defaults are its recipe)
    train = {"max_grad_norm": REFERENCE_MAX_GRAD_NORM}
    return make_config(model, ahn_type="gdn", train=train, data={"max_samples": 100_000})
