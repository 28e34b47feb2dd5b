"""Compile our Pallas kernels for real TPU targets from this CPU host and report what Mosaic and XLA
say: scoped VMEM per kernel, HBM argument/output/temp bytes, and XLA's cost analysis. Nothing runs
on a TPU, so numerics and speed are not measured here.

  python bench/tpu_compile.py [--topologies=v5e:2x2,v6e:2x2]

Sizes are Qwen2.5-3B's: 16 query heads (2 kv heads), head dim 128, AHN state 128 x 128 per head.
"""

from __future__ import annotations

import os

import _paths  # noqa: F401  - must precede any import of `kernels`; see bench/_paths.py

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from common import machine, write_result  # noqa: E402

from kernels.common import inter_chunk_pallas, tpu_aot  # noqa: E402
from kernels.window_attention import sink_window_attention  # noqa: E402

f32 = jnp.float32
HEADS, KV_HEADS, D, C = 16, 2, 128, 64
HP = jax.lax.Precision.HIGHEST

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("topologies", list(tpu_aot.TOPOLOGIES),
                      "TPU targets to compile for, comma-separated")  # fmt: skip


def scan_shapes(T):
    N = T // C
    shapes = [(HEADS, N, C, D), (HEADS, N, C, D), (HEADS, N, C, D), (HEADS, N, C, C),
              (HEADS, N, C, D), (HEADS, N, 1, D), (HEADS, D, D)]  # fmt: skip
    return [(s, f32) for s in shapes]


def scan_forward(*args):
    return inter_chunk_pallas.scan_flat(*args, HP)


def scan_backward(*args):
    """The reverse kernel alone, fed forward-shaped residuals and cotangents."""
    u, w, qg, P, kd, decay, S0 = args
    states = jnp.zeros((*u.shape[:2], D, D), f32)
    return inter_chunk_pallas.backward(u, w, qg, P, kd, decay, states, u, S0, HP)


def scan_forward_backward(*args):
    outputs, vjp = jax.vjp(scan_forward, *args)
    return vjp(jax.tree.map(jnp.ones_like, outputs))


def splash_forward_backward(q, k, v):
    def loss(q, k, v):
        return jnp.sum(sink_window_attention(q, k, v, window=512, sinks=128, impl="splash"))

    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def report(topology, name, fn, shapes, vmem: bool) -> dict:
    _, compiled = tpu_aot.compile_for(topology, fn, *shapes)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    row = {
        "topology": topology,
        "program": name,
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "flops": cost.get("flops"),
        "bytes_accessed": cost.get("bytes accessed"),
        "transcendentals": cost.get("transcendentals"),
        "scoped_vmem_bytes": tpu_aot.scoped_vmem_bytes(topology, fn, *shapes) if vmem else None,
    }
    print(row, flush=True)
    return row


def main(argv) -> None:
    del argv
    rows = []
    for topology in FLAGS.topologies:
        for T in (512, 8192):
            shapes = scan_shapes(T)
            rows.append(report(topology, f"delta scan fwd T={T}", scan_forward, shapes, True))
            rows.append(report(topology, f"delta scan bwd T={T}", scan_backward, shapes, True))
            rows.append(
                report(topology, f"delta scan fwd+bwd T={T}", scan_forward_backward, shapes, False)
            )
        T = 4096
        q, kv = ((1, T, HEADS, D), f32), ((1, T, KV_HEADS, D), f32)
        rows.append(
            report(
                topology,
                f"splash W=512 S=128 fwd+bwd T={T}",
                splash_forward_backward,
                [q, kv, kv],
                False,
            )  # fmt: skip
        )
    write_result("tpu_compile", {"benchmark": "tpu_compile", "machine": machine(), "rows": rows})
    print(
        "\n| topology | program | scoped VMEM | HBM args / out / temp (MiB) | GFLOP | GB accessed |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        vmem = (
            "n/a" if r["scoped_vmem_bytes"] is None else f"{r['scoped_vmem_bytes'] / 2**10:.0f} KiB"
        )
        mib = "/".join(
            f"{r[k] / 2**20:.1f}" for k in ("argument_bytes", "output_bytes", "temp_bytes")
        )
        flops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"
        accessed = "n/a" if r["bytes_accessed"] is None else f"{r['bytes_accessed'] / 1e9:.3f}"
        print(f"| {r['topology']} | {r['program']} | {vmem} | {mib} | {flops} | {accessed} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
