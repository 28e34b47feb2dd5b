"""Peak temporary memory of the distillation loss's gradient: tiled vs dense logits.

  python bench/loss_memory.py [--lengths=2048,8192,24576] [--tiles=512x8192,1024x16384]
      [--dtype=bfloat16|float32]

Compiles (does not run) the gradient with respect to the student's hidden states of
KL(teacher || student) for Qwen2.5's vocabulary (V = 151,936) and hidden size 2048 (3B), batch 1,
and reads XLA's `memory_analysis().temp_size_in_bytes` on this CPU: the dense loss forms the
[T, V] logits of both streams, the tiled one (ahn_jax.losses.distillation_kl) a few tiles.
`--dtype bfloat16` (default) is the training dtype; XLA:CPU computes bf16 dots in fp32 and hoists
an fp32 copy of the head out of the loop, which a TPU does not need.
"""

from __future__ import annotations

import os

import _paths  # noqa: F401  - first: keeps bench/kernels.py from shadowing the kernels package

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
from absl import app, flags
from common import machine, write_result

from ahn_jax.training import losses

V, D = 151_936, 2048

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("lengths", "2048,8192,24576", "sequence lengths T, comma-separated")
    flags.DEFINE_list("tiles", "512x8192,1024x16384",
                      "tilings of the tiled loss, SEQxVOCAB, comma-separated")  # fmt: skip
    flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "the loss's dtype")


def dense_kl(student, teacher, head, valid):
    log_p_t = jax.nn.log_softmax(jnp.einsum("BTD,DV->BTV", teacher, head), -1)
    log_p_s = jax.nn.log_softmax(jnp.einsum("BTD,DV->BTV", student, head), -1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1)
    return jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def temp_bytes(loss, T, dtype):
    hidden = jax.ShapeDtypeStruct((1, T, D), dtype)
    head = jax.ShapeDtypeStruct((D, V), dtype)
    valid = jax.ShapeDtypeStruct((1, T), jnp.bool_)
    compiled = jax.jit(jax.grad(loss)).lower(hidden, hidden, head, valid).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
    del argv
    lengths, tiles = [int(x) for x in FLAGS.lengths], FLAGS.tiles
    rows = []
    for T in lengths:
        dtype = jnp.dtype(FLAGS.dtype)
        row = {"T": T, "dense": temp_bytes(dense_kl, T, dtype) if T <= 8192 else None}
        for tile in tiles:
            seq_tile, vocab_tile = (int(x) for x in tile.split("x"))

            def tiled(s, t, h, v, seq_tile=seq_tile, vocab_tile=vocab_tile):
                return losses.distillation_kl(s, t, h, v, seq_tile=seq_tile, vocab_tile=vocab_tile)[
                    0
                ]

            row[tile] = temp_bytes(tiled, T, dtype)
        rows.append(row)
        print(row, flush=True)
    write_result(f"loss_memory_{FLAGS.dtype}", {"machine": machine(), "V": V, "D": D, "rows": rows})
    print(
        "\n| T | [T, V] fp32 logits | dense KL grad temp | "
        + " | ".join(f"tiled {t} temp" for t in tiles)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(tiles))
    for r in rows:
        dense = f"{r['dense'] / 2**20:,.0f} MiB" if r["dense"] is not None else "n/a"
        cells = " | ".join(f"{r[t] / 2**20:,.1f} MiB" for t in tiles)
        print(f"| {r['T']} | {r['T'] * V * 4 / 2**20:,.0f} MiB | {dense} | {cells} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
