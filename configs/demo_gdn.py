"""The demo's distillation: AHN-GDN on the pretrained tiny base (configs/tiny_base.py), taught by
the same base with full attention on Shakespeare windows with key/recall pairs.

  python -m ahn_jax.train --config=configs/demo_gdn.py \
      --config.train.base_checkpoint=ahn_jax/assets/demo_base

The flag points at the committed base; this config's own base_checkpoint, runs/demo_base/model,
exists only after `python -m ahn_jax.train --config=configs/tiny_base.py` (54 min). `make demo`
(`python -m ahn_jax.demo`) runs this config on the base it finds, the committed one first.

The student sees 4 sinks + a window of 32 bytes, so every recall (64-192 bytes after its key)
needs the memory. `--config.ahn.type=dn` or `mamba2` (and another output_dir) trains the others.
1200 steps (~5 min on 2 CPU cores): at 400 the KL was still falling and the AHNs recovered under
a third of what they do at 1200. Peak learning rate 6e-3: at 3e-3 Mamba2 recovered 44% of full
attention's recall margin on the 30,000-step base, at 6e-3 64% (DN 68 -> 76%, GDN 78% both); on
the committed base at 6e-3 GDN 73%, DN 72%, Mamba2 63% (docs/results.md)."""

from ahn_jax.config import make_config
from configs.tiny_base import DATA, MODEL

WINDOW, SINKS = 32, 4


def get_config():
    train = dict(
        steps=1200,
        batch_size=16,
        seq_len=256,
        learning_rate=6e-3,
        window_sampling="fixed",
        window=WINDOW,
        sinks=SINKS,
        vocab_tile=256,
        seq_tile=256,
        checkpoint_every=100,
        keep_checkpoints=1,
        log_every=10,
        base_checkpoint="runs/demo_base/model",
        output_dir="runs/demo/gdn",
    )
    return make_config(MODEL, ahn_type="gdn", train=train, data=DATA)
