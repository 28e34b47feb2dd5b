"""`make demo`: self-distil AHN-GDN on the tiny config, then score held-out text in three modes.

  python -m ahn_jax.demo [--config=configs/tiny_gdn.py] [--config.train.steps=60]

1. Trains through the real training entry point (`ahn_jax.train.train`): the tiny byte-level
   Qwen2-architecture model's AHN weights learn, by KL self-distillation, to make the
   sinks + window model behave like the full-attention one on Shakespeare (held-out plays
   excluded). A finished run in `train.output_dir` is picked up, not repeated.
2. Scores windows of a held-out play: next-byte loss under full attention, sinks + window, and
   sinks + window + AHN, and each restricted model's KL to the full one, on the positions beyond
   the window (where the memory acts).

Until the miniature-reproduction issue provides a pretrained base, the base is the config's random
initialisation, so the numbers show the machinery, not the paper's effect.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from ahn_jax import cli, data, train
from ahn_jax.tokenizer import ByteTokenizer

_PLAY = flags.DEFINE_string("play", "hamlet", "held-out play whose text is scored")


def text_windows(text: str, seq_len: int, batch_size: int, seed: int) -> np.ndarray:
    tokens = np.asarray(ByteTokenizer().encode(text), dtype=np.int32)
    if len(tokens) <= seq_len:
        raise ValueError(f"text of {len(tokens)} bytes is shorter than seq_len={seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - seq_len, size=batch_size)
    return np.stack([tokens[s : s + seq_len] for s in starts])


def evaluate(model, ids, window: int, sinks: int) -> dict[str, float]:
    """Next-byte loss per mode, and KL to full attention, on positions t >= S + W."""
    ids = jnp.asarray(ids)
    logits = {
        "full": model(ids),
        "swa": model(ids, mode="swa", window=window, sinks=sinks),
        "ahn": model(ids, mode="ahn", window=window, sinks=sinks),
    }
    beyond = slice(window + sinks, -1)
    targets = ids[:, window + sinks + 1 :, None]
    result = {}
    log_p_full = jax.nn.log_softmax(logits["full"][:, beyond], -1)
    for mode, value in logits.items():
        log_p = jax.nn.log_softmax(value[:, beyond], -1)
        result[f"{mode}_loss"] = float(-jnp.mean(jnp.take_along_axis(log_p, targets, -1)))
        if mode != "full":
            kl = jnp.sum(jnp.exp(log_p_full) * (log_p_full - log_p), -1)
            result[f"{mode}_kl"] = float(jnp.mean(kl))
    return result


def main(argv) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = cli.config()
    texts = data.shakespeare_texts()
    if _PLAY.value not in texts:
        raise app.UsageError(f"--play={_PLAY.value!r} is not one of {sorted(texts)}")
    if _PLAY.value not in config.data.get("held_out", ()):
        raise app.UsageError(f"--play={_PLAY.value!r} is not held out from training")
    t = config.train
    print(
        f"1. self-distilling AHN-{config.ahn.type.upper()} for {t.steps} steps ({t.batch_size} x "
        f"{t.seq_len} bytes of Shakespeare per step) into {t.output_dir}"
    )
    start = time.perf_counter()
    run = train.train(config)
    model = nnx.merge(run.graphdef, run.trainable, run.frozen)
    n_base = sum(x.size for x in jax.tree.leaves(run.frozen))
    n_ahn = sum(x.size for x in jax.tree.leaves(run.trainable))
    print(
        f"   done in {time.perf_counter() - start:.0f} s; base {n_base:,} parameters (frozen, "
        f"random init), AHN {n_ahn:,} trained"
    )

    demo = config.demo
    window, sinks = demo.window, demo.sinks
    windows = text_windows(texts[_PLAY.value], demo.seq_len, demo.batch_size, demo.seed)
    print(
        f"2. held-out '{_PLAY.value}': {demo.batch_size} windows x {demo.seq_len} bytes, "
        f"S={sinks} sinks + W={window} window, scored at positions >= S + W"
    )
    scores = evaluate(model, windows, window, sinks)
    print("   | mode | next-byte loss (nats) | KL to full |")
    print("   |---|---|---|")
    print(f"   | full attention | {scores['full_loss']:.4f} | 0 |")
    print(f"   | sinks + window | {scores['swa_loss']:.4f} | {scores['swa_kl']:.5f} |")
    print(f"   | sinks + window + AHN | {scores['ahn_loss']:.4f} | {scores['ahn_kl']:.5f} |")
    print(f"   (uniform guess: ln 256 = {math.log(256):.4f}); AHN weights: {t.output_dir}/ahn")


if __name__ == "__main__":
    cli.define_config_flag("configs/tiny_gdn.py")
    app.run(main)
