"""Tokens/s of the full-mode forward: ahn_jax (jit, XLA CPU) vs transformers (torch, same threads).

Same config, same weights (ours are loaded from the checkpoint transformers saved), same batch;
the two are timed interleaved in one run and reported as a ratio. Logits are checked to agree.

  python bench/forward.py [--lengths=512,1024,2048,4096] [--batch=1] [--repeats=5]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import _paths  # noqa: F401  - must precede any import of `kernels`; see bench/_paths.py

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from common import machine, write_result  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import ahn_jax  # noqa: E402

# A small Qwen2 (about 30 M parameters): big enough that matmuls and attention dominate.
CONFIG = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=2,
    rope_theta=1e6,
    tie_word_embeddings=True,
    attn_implementation="sdpa",
)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096"],
                      "sequence lengths T, comma-separated")  # fmt: skip
    flags.DEFINE_integer("batch", 1, "sequences per forward")
    flags.DEFINE_integer("repeats", 5, "timed forwards of each side (the median is kept)")


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(model, hf_model, length: int) -> dict:
    """One length: tokens/s of both (their repeats interleaved) and the largest logit gap."""
    ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (FLAGS.batch, length))
    ids_torch = torch.tensor(ids)

    def run_ours(ids=ids):
        return jax.block_until_ready(model(ids))

    def run_torch(ids_torch=ids_torch):
        with torch.inference_mode():
            return hf_model(ids_torch).logits

    ours, theirs = np.asarray(run_ours()), run_torch().numpy()  # warm-up and compile
    max_err = float(np.abs(ours - theirs).max())
    t_ours, t_torch = [], []
    for _ in range(FLAGS.repeats):  # interleave so load changes hit both sides alike
        t_ours.append(_median_seconds(run_ours, 1))
        t_torch.append(_median_seconds(run_torch, 1))
    tokens = FLAGS.batch * length
    row = {
        "length": length,
        "batch": FLAGS.batch,
        "ahn_jax_tokens_per_s": tokens / statistics.median(t_ours),
        "torch_tokens_per_s": tokens / statistics.median(t_torch),
        "max_abs_logit_diff": max_err,
    }
    row["speedup"] = row["ahn_jax_tokens_per_s"] / row["torch_tokens_per_s"]
    return row


def main(argv) -> None:
    del argv
    lengths = [int(x) for x in FLAGS.lengths]

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_model = Qwen2ForCausalLM(Qwen2Config(**CONFIG)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model.save_pretrained(tmp)
        model = ahn_jax.from_pretrained(tmp)

    rows = []
    for length in lengths:
        row = _measure(model, hf_model, length)
        rows.append(row)
        print(
            f"T={length:5d}  ahn_jax {row['ahn_jax_tokens_per_s']:9.0f} tok/s  "
            f"torch {row['torch_tokens_per_s']:9.0f} tok/s  ratio {row['speedup']:.2f}  "
            f"max|dlogit| {row['max_abs_logit_diff']:.1e}",
            flush=True,
        )
    n_params = sum(p.numel() for p in hf_model.parameters())
    result = {
        "benchmark": "forward",
        "machine": machine(),
        "torch_threads": threads,
        "config": CONFIG,
        "params": n_params,
        "rows": rows,
    }
    print(f"wrote {write_result('forward', result)}")
    print("\n| T | ahn_jax tok/s | transformers tok/s | ratio |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['length']} | {r['ahn_jax_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} "
            f"| {r['speedup']:.2f} |"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
