"""Where a training step's backward pass goes on the CPU: its parts, side by side in one run.

  python bench/backward_parts.py [--shapes=tiny_base,50m] [--repeats=5]

For each shape (`SHAPES`: the demo base's pretraining batch, and bench/train_step.py's 50m model at
T = 1024), forward and forward + backward, each the best of `--repeats` after a warm-up, of:
- attention: `causal_attention` (the blocked path, whose gradient is a written-out backward) against
  automatic differentiation through the same blocked forward (`blocked._forward`, what the model
  differentiated before), and against the dense reference differentiated automatically;
- the SwiGLU MLP: as the model computes it (`layers.SwiGLU`, one [B*T, D] matrix per product)
  against the same products as 3-D einsums "BTD,DF->BTF".
The losses are sums of squares; gradients with respect to every input. Ratios: other / ours
(> 1: ours is faster). Writes bench/results/backward_parts.json.
"""

from __future__ import annotations

import _paths

_paths.cpu_unless_told()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import best_seconds, check_known, machine, write_result  # noqa: E402
from flax import nnx  # noqa: E402

from ahn_jax.config import ModelConfig  # noqa: E402
from ahn_jax.model.layers import SwiGLU  # noqa: E402
from kernels.window_attention import blocked, causal_attention, naive  # noqa: E402

FLAGS = flags.FLAGS
# batch, length, query heads, K/V heads, head size, hidden size, MLP width
SHAPES = {
    "tiny_base": dict(B=16, T=256, N=2, K=2, H=32, D=64, F=192),  # configs/tiny_base.py
    "50m": dict(B=1, T=1024, N=8, K=2, H=64, D=512, F=1408),  # bench/train_step.py's 50m
}


def define_flags() -> None:
    flags.DEFINE_list("shapes", list(SHAPES), f"shapes from {sorted(SHAPES)}")
    flags.DEFINE_integer("repeats", 5, "timed calls of each side (the best is kept)")


def _times(loss, *args) -> dict:
    forward = best_seconds(jax.jit(loss), *args, repeats=FLAGS.repeats)
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
    both = best_seconds(grads, *args, repeats=FLAGS.repeats)
    return {"forward_ms": forward * 1e3, "forward_backward_ms": both * 1e3}


def _attention_rows(s: dict, rng) -> dict:
    q = rng.standard_normal((s["B"], s["T"], s["N"], s["H"]), np.float32)
    k, v = rng.standard_normal((2, s["B"], s["T"], s["K"], s["H"]), np.float32)
    B, scale = s["B"], s["H"] ** -0.5
    whole, none = jnp.full((B,), s["T"], jnp.int32), jnp.zeros((B,), jnp.int32)
    block = min(512, s["T"])  # what causal_attention picks

    def ours(q, k, v):
        return jnp.sum(causal_attention(q, k, v) ** 2)

    def autodiff(q, k, v):
        return jnp.sum(blocked._forward(q, k, v, whole, none, scale, block)[0] ** 2)

    def dense(q, k, v):
        return jnp.sum(naive.reference(q, k, v, s["T"], 0, scale) ** 2)

    sides = (("ours", ours), ("autodiff_blocked", autodiff), ("autodiff_dense", dense))
    return {name: _times(fn, q, k, v) for name, fn in sides}


def _mlp_rows(s: dict, rng) -> dict:
    config = ModelConfig(vocab_size=256, hidden_size=s["D"], intermediate_size=s["F"],
                         num_layers=1, num_heads=s["N"], num_kv_heads=s["K"], head_dim=s["H"],
                         dtype="float32", param_dtype="float32")  # fmt: skip
    graphdef, state = nnx.split(SwiGLU(config, nnx.Rngs(0)))
    mlp = nnx.merge(graphdef, state)
    weights = [np.asarray(w[...]) for w in (mlp.gate_kernel, mlp.up_kernel, mlp.down_kernel)]
    x = rng.standard_normal((s["B"], s["T"], s["D"]), np.float32)

    def ours(x, state):
        return jnp.sum(nnx.merge(graphdef, state)(x) ** 2)

    def einsum_3d(x, gate, up, down):
        g = jnp.einsum("BTD,DF->BTF", x, gate)
        u = jnp.einsum("BTD,DF->BTF", x, up)
        return jnp.sum(jnp.einsum("BTF,FD->BTD", jax.nn.silu(g) * u, down) ** 2)

    return {"ours": _times(ours, x, state), "einsum_3d": _times(einsum_3d, x, *weights)}


def main(argv) -> None:
    del argv
    check_known("shapes", FLAGS.shapes, SHAPES)
    rng = np.random.default_rng(0)
    result = {"machine": machine(), "shapes": {}}
    print("| shape | part | ours fwd / fwd+bwd ms | other | other fwd / fwd+bwd ms | "
          "fwd+bwd other / ours |\n|---|---|---|---|---|---:|")  # fmt: skip
    for name in FLAGS.shapes:
        s = SHAPES[name]
        parts = {"attention": _attention_rows(s, rng), "mlp": _mlp_rows(s, rng)}
        result["shapes"][name] = {"shape": s, **parts}
        for part, rows in parts.items():
            ours = rows["ours"]
            for other, row in rows.items():
                if other == "ours":
                    continue
                ratio = row["forward_backward_ms"] / ours["forward_backward_ms"]
                print(f"| {name} | {part} | {ours['forward_ms']:.1f} / "
                      f"{ours['forward_backward_ms']:.1f} | {other} | {row['forward_ms']:.1f} / "
                      f"{row['forward_backward_ms']:.1f} | {ratio:.2f} |", flush=True)  # fmt: skip
    print(f"written: {write_result('backward_parts', result)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
