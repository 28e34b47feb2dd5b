"""Pretraining of the demo's tiny base: a byte-level Qwen2-architecture model (2 layers, d 64,
2 heads of 32, 0.14 M parameters), no AHN, every weight trained by next-token prediction under
full attention: first a copy warm-up (2000 steps of random lowercase filler with three key/recall
pairs per 256-byte window), then the Shakespeare plays (four held out) with one pair per window
(ahn_jax/training/recall_pairs.py, `data.copy_warmup`).

  python -m ahn_jax.train --config=configs/tiny_base.py     # 54 min on 2 CPU cores

34,000 steps of 16 x 256 bytes (139 M bytes) at ~0.095 s a step on 2 cores. The committed base
(ahn_jax/assets/demo_base) is this command's export. The warm-up is what makes it copy: held-out
recalled letters at 0.002 nats at the end, against 2.97 for the keys' letters, where text with
one pair per window had not formed the circuit in 82 M bytes (docs/results.md). The keys are 16
distinct capital letters: lowercase keys share their alphabet with two thirds of the text, so a
copying head that looks for "the byte after the current letter" finds a dozen matches in the text
for each one in the key.
"""

from ahn_jax.config import make_config
from configs import tiny_gdn
from configs.tiny_gdn import HELD_OUT

# configs/tiny_gdn.py's byte-level model (vocabulary, RoPE, untied head), made smaller
MODEL = dict(tiny_gdn.MODEL, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=2,
             num_kv_heads=2, head_dim=32)  # fmt: skip
RECALL = {"span": 16, "pairs": 1, "min_gap": 64, "max_gap": 192,
          "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "distinct": True}  # fmt: skip
# Shakespeare windows of 256 bytes with one pair each; the demo's distillation reads the same
DATA = dict(format="shakespeare", tokenizer="bytes", filter_len=64, cutoff_len=256,
            held_out=HELD_OUT, recall=RECALL)  # fmt: skip
# a copy warm-up first: windows of random lowercase filler with three pairs each, where copying is
# most of what there is to learn; it formed the copying circuit within ~1000 steps in
# bench/recall_pretrain_sweep.py (curriculum Y, --synthetic), which text with one pair per window
# had not in 82 M bytes (docs/results.md)
COPY_WARMUP = {"steps": 2000, "pairs": 3, "min_gap": 40, "max_gap": 120}


def get_config():
    train = dict(
        objective="pretrain",
        steps=34000,
        batch_size=16,
        seq_len=256,
        learning_rate=2e-3,
        warmup_fraction=0.02,
        weight_decay=0.01,
        vocab_tile=256,
        seq_tile=256,
        checkpoint_every=500,
        keep_checkpoints=1,
        log_every=100,
        output_dir="runs/demo_base",
    )
    # the first 2000 steps copy: random filler with three pairs per window (COPY_WARMUP)
    data = dict(DATA, copy_warmup=COPY_WARMUP)
    return make_config(MODEL, ahn_type=None, train=train, data=data)
