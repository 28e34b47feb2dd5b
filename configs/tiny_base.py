"""Pretraining of the demo's tiny base: configs/tiny_gdn.py's byte-level Qwen2 model, no AHN,
every weight trained by next-token prediction under full attention on the Shakespeare plays (four
held out) with one key/recall pair per 256-byte window (ahn_jax/recall.py).

  python -m ahn_jax.train --config=configs/tiny_base.py

The recall is learned abruptly, after about 70-80 M tokens in the sweep of
bench/recall_pretrain_sweep.py (config "E", the same curriculum): the 6000 steps here are 98 M
tokens. That is about 1 minute on an NVIDIA H200 and several hours on 2 CPU cores, so the result is
committed (runs/demo_base/model, docs/results.md gives the run).
"""

from ahn_jax.config import make_config
from configs.tiny_gdn import HELD_OUT, MODEL

RECALL = {"span": 16, "pairs": 1, "min_gap": 64, "max_gap": 192}
# Shakespeare windows of 256 bytes with one pair each; the demo's distillation reads the same
DATA = dict(format="shakespeare", tokenizer="bytes", filter_len=64, cutoff_len=256,
            held_out=HELD_OUT, recall=RECALL)  # fmt: skip


def get_config():
    train = dict(
        objective="pretrain",
        steps=6000,
        batch_size=64,
        seq_len=256,
        learning_rate=1e-3,
        warmup_fraction=0.033,
        weight_decay=0.01,
        vocab_tile=256,
        seq_tile=256,
        checkpoint_every=1000,
        keep_checkpoints=1,
        log_every=100,
        output_dir="runs/demo_base",
    )
    return make_config(MODEL, ahn_type=None, train=train, data=DATA)
