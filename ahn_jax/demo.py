"""`make demo`: the tiny config's Qwen2-architecture model on real text, with its loss.

Until the training issue lands this does not train: it initialises the tiny byte-level model from
its seed, reads windows of a held-out Shakespeare play and prints the next-byte loss next to the
uniform baseline ln(256), plus the forward throughput. It shows the whole path (config file ->
validated settings -> NNX model -> jitted scanned forward -> loss) running on a laptop CPU.

  python -m ahn_jax.demo [--config=configs/tiny_gdn.py] [--config.demo.seq_len=256]
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ahn_jax import cli, data, losses
from ahn_jax.config import validate_config
from ahn_jax.model import init_model
from ahn_jax.tokenizer import ByteTokenizer

_CONFIG = cli.config_file_flag("configs/tiny_gdn.py")
_PLAY = flags.DEFINE_string("play", "hamlet", "held-out play whose text is scored")


def text_windows(text: str, seq_len: int, batch_size: int, seed: int) -> np.ndarray:
    tokens = np.asarray(ByteTokenizer().encode(text), dtype=np.int32)
    if len(tokens) <= seq_len:
        raise ValueError(f"text of {len(tokens)} bytes is shorter than seq_len={seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - seq_len, size=batch_size)
    return np.stack([tokens[s : s + seq_len] for s in starts])


def main(argv) -> None:
    del argv
    config = _CONFIG()
    model_config = validate_config(config)
    demo = config.demo
    texts = data.shakespeare_texts()
    if _PLAY.value not in texts:
        raise app.UsageError(f"--play={_PLAY.value!r} is not one of {sorted(texts)}")
    windows = text_windows(texts[_PLAY.value], demo.seq_len, demo.batch_size, demo.seed)

    model = init_model(model_config, seed=demo.seed)
    n_params = sum(x.size for x in jax.tree.leaves(model))
    print(
        f"model: {n_params:,} parameters, {model_config.num_layers} layers, "
        f"d={model_config.hidden_size}, vocab={model_config.vocab_size} (bytes), untrained"
    )
    print(f"text: {demo.batch_size} windows x {demo.seq_len} bytes of '{_PLAY.value}'")

    loss_fn = jax.jit(lambda ids: losses.next_token_cross_entropy(model(ids), ids))
    loss = float(loss_fn(jnp.asarray(windows)))  # compiles
    start = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        jax.block_until_ready(loss_fn(jnp.asarray(windows)))
    tokens_per_s = repeats * windows.size / (time.perf_counter() - start)
    print(f"next-byte loss: {loss:.4f} nats/byte (uniform guess: ln 256 = {math.log(256):.4f})")
    print(f"forward: {tokens_per_s:,.0f} tokens/s on {jax.devices()[0].platform}")
    print("training arrives with the training issue; this demo only runs the untrained model.")


if __name__ == "__main__":
    app.run(main)
