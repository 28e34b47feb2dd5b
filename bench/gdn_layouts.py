"""The chunked gated delta rule in its two XLA layouts, side by side, and fla's Triton kernel when
it imports: the GDN row of the accelerator issue's GPU check (target: "batched" at least 5x the
in-scan "chunked" form on the same card at T = 8k-32k, H = 16, D = 128).

  JAX_PLATFORMS=cuda python bench/gdn_layouts.py [--lengths=8192,16384,32768] [--repeats=3]
  python bench/gdn_layouts.py --lengths=512,1024 --heads=2 --dim=32   # a CPU smoke run

chunked: `impl="chunked"`, each chunk's work inside one `lax.scan` over chunks (the CPU default).
batched: `impl="batched"`, every chunk's state-free terms at once, only the state recurrence in a
  scan (the GPU/TPU default of `kernels="xla"`; docs/kernels.md).
fla: `fla.ops.gated_delta_rule.chunk_gated_delta_rule` (torch, Triton), if `fla` imports and torch
  sees a GPU; otherwise reported as not run, with the reason.
Batch 1, bf16 inputs on an accelerator (fp32 on a CPU), q/k L2-normalised inside each kernel, the
default precision (TF32/bf16 tensor cores where the card has them). Forward and forward +
backward (gradients of sum(o) to every input), best of `--repeats` after a compiling call; the
outputs of the three are compared. Writes bench/results/gdn_layouts[_<platform>].json.
"""

from __future__ import annotations

import time

import _paths  # first: keeps bench/kernels.py from shadowing the kernels package

_paths.cpu_unless_told()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import best_seconds, device_and_dtype, machine, write_result  # noqa: E402

import ahn_jax  # noqa: E402,F401  - adds XLA:CPU's YNN reduction workaround (ahn_jax/xla_cpu.py)
from kernels.delta_rule import gated_delta_rule  # noqa: E402

FLAGS = flags.FLAGS
LAYOUTS = ("chunked", "batched")


def define_flags() -> None:
    flags.DEFINE_list("lengths", ["8192", "16384", "32768"], "sequence lengths T")
    flags.DEFINE_integer("heads", 16, "heads N")
    flags.DEFINE_integer("dim", 128, "head size H = E")
    flags.DEFINE_integer("repeats", 3, "timed calls per measurement (the best is kept)")


def inputs(T: int, N: int, D: int, dtype) -> tuple:
    rng = np.random.default_rng(0)

    def arr(*shape, values=None):
        values = rng.standard_normal(shape) if values is None else values
        return jnp.asarray(values, dtype)

    g = -np.log1p(np.exp(rng.standard_normal((1, T, N))))  # log-decays <= 0, as the model's
    beta = rng.uniform(size=(1, T, N))
    return (
        arr(1, T, N, D),
        arr(1, T, N, D),
        arr(1, T, N, D),
        jnp.asarray(g, jnp.float32),
        jnp.asarray(beta, dtype),
    )


def jax_functions(impl: str):
    def forward(q, k, v, g, beta):
        o, _ = gated_delta_rule(
            q, k, v, g, beta, impl=impl, use_qk_l2norm=True, precision=jax.lax.Precision.DEFAULT
        )
        return o

    def loss(*args):
        return jnp.sum(forward(*args).astype(jnp.float32))

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def fla_times(args, repeats: int):
    """(forward s, forward + backward s, output as numpy) of fla's kernel, or a reason string."""
    try:
        import torch
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
        return f"fla not importable: {type(e).__name__}: {e}"
    if not torch.cuda.is_available():
        return "torch sees no GPU"
    dtype = torch.bfloat16 if args[0].dtype == jnp.bfloat16 else torch.float32
    q, k, v, g, beta = (
        torch.tensor(np.asarray(x.astype(jnp.float32)), device="cuda").to(
            torch.float32 if i == 3 else dtype
        )
        for i, x in enumerate(args)
    )

    def run(backward: bool):
        leaves = [x.detach().requires_grad_(backward) for x in (q, k, v, g, beta)]
        o, _ = chunk_gated_delta_rule(*leaves, use_qk_l2norm_in_kernel=True)
        if backward:
            o.float().sum().backward()
        return o

    def best(backward: bool) -> float:
        run(backward)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(backward)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    out = run(False).float().cpu().numpy()
    return best(False), best(True), out


def measure(T: int, N: int, D: int, dtype) -> dict:
    """One length's row: each layout's forward and forward + backward seconds, their ratios, the
    outputs' largest difference, and fla's (or why fla did not run)."""
    args = inputs(T, N, D, dtype)
    row, outputs = {"T": T}, {}
    for impl in LAYOUTS:
        forward, grads = jax_functions(impl)
        row[f"{impl}_forward_s"] = best_seconds(forward, *args, repeats=FLAGS.repeats)
        row[f"{impl}_forward_backward_s"] = best_seconds(grads, *args, repeats=FLAGS.repeats)
        outputs[impl] = np.asarray(forward(*args).astype(jnp.float32))
    for part in ("forward", "forward_backward"):
        row[f"speedup_{part}"] = row[f"chunked_{part}_s"] / row[f"batched_{part}_s"]
    row["max_abs_diff_batched_vs_chunked"] = float(
        np.abs(outputs["batched"] - outputs["chunked"]).max()
    )
    fla = fla_times(args, FLAGS.repeats)
    if isinstance(fla, str):
        row["fla"] = fla
    else:
        row["fla_forward_s"], row["fla_forward_backward_s"], fla_out = fla
        row["max_abs_diff_fla_vs_batched"] = float(np.abs(fla_out - outputs["batched"]).max())
    return row


def print_table(rows: list[dict], title: str) -> None:
    print(f"{title}; milliseconds, best of {FLAGS.repeats}\n")
    print(
        "| T | chunked fwd | batched fwd | speedup | chunked fwd+bwd | batched fwd+bwd | speedup "
        "| fla fwd | fla fwd+bwd | max diff |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        fla = (
            f"{r['fla_forward_s'] * 1e3:.2f} | {r['fla_forward_backward_s'] * 1e3:.2f}"
            if "fla_forward_s" in r
            else "n/a | n/a"
        )
        print(
            f"| {r['T']} | {r['chunked_forward_s'] * 1e3:.2f} | {r['batched_forward_s'] * 1e3:.2f}"
            f" | {r['speedup_forward']:.2f}x | {r['chunked_forward_backward_s'] * 1e3:.2f} | "
            f"{r['batched_forward_backward_s'] * 1e3:.2f} | {r['speedup_forward_backward']:.2f}x"
            f" | {fla} | {r['max_abs_diff_batched_vs_chunked']:.1e} |"
        )
    if rows and "fla" in rows[0]:
        print(f"\nfla: {rows[0]['fla']}")


def main(argv) -> None:
    del argv
    device, dtype_name = device_and_dtype()
    N, D = FLAGS.heads, FLAGS.dim
    rows = []
    for T in (int(t) for t in FLAGS.lengths):
        rows.append(measure(T, N, D, jnp.dtype(dtype_name)))
        print(f"T = {T}: done", flush=True)
    result = {
        "benchmark": "gdn_layouts",
        "machine": machine(),
        "device": device.device_kind,
        "jax": jax.__version__,
        "dtype": dtype_name,
        "heads": N,
        "dim": D,
        "rows": rows,
    }
    suffix = "" if device.platform == "cpu" else f"_{device.platform}"
    print(f"wrote {write_result('gdn_layouts' + suffix, result)}\n")
    print_table(rows, f"{device.device_kind}, B = 1, N = {N}, D = {D}, {dtype_name}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
