"""Where bench/forward.py's gap to transformers comes from: its parts, side by side on the CPU.

  python bench/forward_parts.py [--lengths=1024,2048,4096] [--repeats=5]

Times, interleaved in one run with the same threads, (1) the forward's matmul shapes at T = 2048
(bench/forward.py's model: D = 512, FFN 1408, K/V 128 wide, vocab 8192) as a jitted `x @ w` against
`torch` `a @ b`, and (2) causal attention at each `--lengths` entry (8 query heads, 2 K/V heads,
head size 64, batch 1): our `causal_attention` (the blocked path the model runs) against
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)` on K/V repeated to 8 heads, as
transformers' sdpa Qwen2 runs it. Each time is the best of `--repeats`; ratios are torch time /
ours (> 1: we are faster). Writes bench/results/forward_parts.json.
"""

from __future__ import annotations

import os

import _paths

_paths.cpu_unless_told()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from common import best_seconds, machine, write_result  # noqa: E402

from kernels.window_attention import causal_attention  # noqa: E402

FLAGS = flags.FLAGS
# (M, K, N) of bench/forward.py's products at T = 2048: q/o, k/v, gate/up, down, lm_head
MATMULS = ((2048, 512, 512), (2048, 512, 128), (2048, 512, 1408), (2048, 1408, 512),
           (2048, 512, 8192))  # fmt: skip


def define_flags() -> None:
    flags.DEFINE_list("lengths", ["1024", "2048", "4096"], "attention lengths, comma-separated")
    flags.DEFINE_integer("repeats", 5, "timed calls of each side (the best is kept)")


def _matmul_row(m: int, k: int, n: int) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ours = best_seconds(jax.jit(lambda x, w: x @ w), a, b, repeats=FLAGS.repeats)
    theirs = best_seconds(torch.matmul, torch.from_numpy(a), torch.from_numpy(b),
                          repeats=FLAGS.repeats)  # fmt: skip
    flop = 2 * m * k * n
    return {"shape": [m, k, n], "ahn_jax_gflops": flop / ours / 1e9,
            "torch_gflops": flop / theirs / 1e9, "ratio": theirs / ours}  # fmt: skip


def _attention_row(length: int) -> dict:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, length, 8, 64), np.float32)
    k, v = rng.standard_normal((2, 1, length, 2, 64), np.float32)
    attend = jax.jit(lambda q, k, v: causal_attention(q, k, v))
    ours = best_seconds(attend, q, k, v, repeats=FLAGS.repeats)
    tq = torch.from_numpy(q).transpose(1, 2)
    tk, tv = (torch.from_numpy(x).transpose(1, 2).repeat_interleave(4, 1) for x in (k, v))
    with torch.inference_mode():
        sdpa = torch.nn.functional.scaled_dot_product_attention
        theirs = best_seconds(lambda: sdpa(tq, tk, tv, is_causal=True), repeats=FLAGS.repeats)
        want = sdpa(tq, tk, tv, is_causal=True).transpose(1, 2).numpy()
    error = float(np.abs(np.asarray(attend(q, k, v)) - want).max())
    return {"length": length, "ahn_jax_ms": ours * 1e3, "torch_ms": theirs * 1e3,
            "ratio": theirs / ours, "max_abs_diff": error}  # fmt: skip


def main(argv) -> None:
    del argv
    torch.set_num_threads(os.cpu_count())
    matmuls = [_matmul_row(*shape) for shape in MATMULS]
    attention = [_attention_row(int(t)) for t in FLAGS.lengths]
    result = {"benchmark": "forward_parts", "machine": machine(), "jax": jax.__version__,
              "torch": torch.__version__, "threads": os.cpu_count(), "matmuls": matmuls,
              "attention": attention}  # fmt: skip
    print(f"wrote {write_result('forward_parts', result)}\n")
    print("| matmul M x K x N | ahn_jax GFLOP/s | torch GFLOP/s | ratio |\n|---|---|---|---|")
    for r in matmuls:
        print(f"| {' x '.join(map(str, r['shape']))} | {r['ahn_jax_gflops']:.0f} | "
              f"{r['torch_gflops']:.0f} | {r['ratio']:.2f} |")  # fmt: skip
    print("\n| causal attention T | ahn_jax ms | torch sdpa ms | ratio | max abs diff |")
    print("|---|---|---|---|---|")
    for r in attention:
        print(f"| {r['length']} | {r['ahn_jax_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} | "
              f"{r['max_abs_diff']:.0e} |")  # fmt: skip


if __name__ == "__main__":
    define_flags()
    app.run(main)
