"""Kernel benchmarks, side by side in one run: chunked vs recurrent (GDN, DN, SSD) and blocked vs
dense sink+window attention, forward and forward+backward, with achieved GFLOP/s next to the
machine's measured large-matmul rate. The blocked attention is `causal_attention` with the model's
block (ahn_jax's attention op): the path the model runs.

  python bench/kernels.py [--lengths=1024,2048,...] [--ops=gdn,dn,ssd,window] [--repeats=2]
      [--max_recurrent_backward=8192] [--precision=highest|default] [--ssd_chunk=256]
  JAX_PLATFORMS=cuda python bench/kernels.py ...   # on a GPU

`--precision` is the kernels' matmul precision knob and is used for the reference matmul rate
too: `highest` is true fp32 everywhere, `default` lets a GPU use TF32 tensor cores.

FLOPs counted (per head; C chunk, H = E = d; shape letters: docs/method.md §Shapes):
  recurrent delta rule: 6 H E per token (k S, k^T u, q S);
  chunked delta rule, per chunk: 2C^2H (k k^T) + C^2 (H+E) (triangular solve) + 2C^2H (q k^T)
    + 6CHE (w S, q S, k^T U) + 2C^2E (P U); SSD drops the first two and w S;
  window attention: 4 d per visible (query, key) pair, i.e. the useful work only (the dense
    reference computes T^2 pairs but is credited the same useful FLOPs).
Forward+backward is credited 3x the forward FLOPs (the usual convention).
"""

from __future__ import annotations

import os

import _paths  # must precede any import of `kernels`; see bench/_paths.py

_paths.cpu_unless_told()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import best_seconds, check_known, machine, write_result  # noqa: E402

from kernels.delta_rule import delta_rule, gated_delta_rule  # noqa: E402
from kernels.ssd import ssd  # noqa: E402
from kernels.window_attention import causal_attention, sink_window_attention  # noqa: E402

HEADS, DIM = 16, 128
WINDOW, SINKS, KV_HEADS = 512, 128, 2
ATTENTION_BLOCK = 512  # the model's block (ahn_jax's attention op passes it to causal_attention)
DENSE_LIMIT_BYTES = 6 * 2**30  # the dense reference's [H, T, T] fp32 scores must fit
OPS = ["gdn", "dn", "ssd", "window"]

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"],
                      "sequence lengths T, comma-separated")  # fmt: skip
    flags.DEFINE_list("ops", OPS, f"ops to time, comma-separated, from {OPS}")
    flags.DEFINE_integer("repeats", 2, "timed calls per measurement (the best is kept)")
    flags.DEFINE_integer("max_recurrent_backward", 8192,
                         "longest T at which the recurrent forward+backward is timed")  # fmt: skip
    flags.DEFINE_enum("precision", "highest", ["highest", "default"],
                      "matmul precision of the kernels and the reference matmul")  # fmt: skip
    flags.DEFINE_integer("ssd_chunk", 256, "SSD chunk (signature: 256)")


def matmul_gflops(repeats: int, precision: str) -> float:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4096, 4096)), jnp.float32)
    product = jax.jit(lambda a: jnp.matmul(a, a, precision=precision))
    seconds = best_seconds(product, x, repeats=max(repeats, 3))
    return 2 * 4096**3 / seconds / 1e9


def delta_flops(T, chunked: bool, C: int, ssd_form: bool = False) -> float:
    d = DIM
    if not chunked:
        return HEADS * T * 6 * d * d
    per_chunk = 2 * C * C * d + 6 * C * d * d + 2 * C * C * d
    if ssd_form:
        per_chunk -= 2 * C * d * d  # no w S
    else:
        per_chunk += 2 * C * C * d + C * C * 2 * d
    return HEADS * -(-T // C) * per_chunk


def window_flops(T) -> float:
    t = np.arange(T)
    visible = np.minimum(t + 1, WINDOW) + np.clip(np.minimum(SINKS, t + 1 - WINDOW), 0, None)
    return HEADS * 4 * DIM * float(visible.sum())


def inputs(T, kind: str):
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    if kind == "window":
        return arr(1, T, HEADS, DIM), arr(1, T, KV_HEADS, DIM), arr(1, T, KV_HEADS, DIM)
    gates = jnp.asarray(-np.log1p(np.exp(rng.standard_normal((1, T, HEADS)))), jnp.float32)
    strengths = jnp.asarray(rng.uniform(size=(1, T, HEADS)), jnp.float32)
    if kind == "ssd":
        A = -jnp.exp(arr(HEADS))
        return arr(1, T, HEADS, DIM), -gates, A, arr(1, T, HEADS, DIM), arr(1, T, HEADS, DIM)
    q, k, v = arr(1, T, HEADS, DIM), arr(1, T, HEADS, DIM), arr(1, T, HEADS, DIM)
    return (q, k, v, gates, strengths) if kind == "gdn" else (q, k, v, strengths)


def op_functions(kind: str, precision: str = "highest", ssd_chunk: int = 256):
    """(baseline name, baseline fn, fast name, fast fn, chunk) for one op."""
    if kind == "gdn":

        def make(impl):
            return lambda *a: gated_delta_rule(
                *a, impl=impl, use_qk_l2norm=True, precision=precision
            )[0]

        return "recurrent", make("recurrent"), "chunked", make("chunked"), 64
    if kind == "dn":

        def make(impl):
            return lambda *a: delta_rule(*a, impl=impl, use_qk_l2norm=True, precision=precision)[0]

        return "recurrent", make("recurrent"), "chunked", make("chunked"), 64
    if kind == "ssd":

        def make(impl):
            return lambda *a: ssd(*a, impl=impl, precision=precision, chunk_size=ssd_chunk)[0]

        return "recurrent", make("recurrent"), "chunked", make("chunked"), ssd_chunk

    def dense(q, k, v):
        return sink_window_attention(q, k, v, window=WINDOW, sinks=SINKS, impl="reference")

    def blocked(q, k, v):  # the model's path
        return causal_attention(q, k, v, block=ATTENTION_BLOCK, window=WINDOW, sinks=SINKS)

    return "dense", dense, "blocked", blocked, None


def forward_backward(fn):
    def grads(*args):
        return jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))(*args)

    return grads


def bench_op(
    kind: str, lengths, repeats: int, max_slow_fb: int, precision: str, ssd_chunk: int = 256
) -> list[dict]:
    base_name, base_fn, fast_name, fast_fn, chunk = op_functions(kind, precision, ssd_chunk)
    rows = []
    for T in lengths:
        args = inputs(T, kind)
        row = {"op": kind, "T": T}
        for mode, wrap in (("fwd", lambda f: f), ("fwd+bwd", forward_backward)):
            mult = 1 if mode == "fwd" else 3
            for name, fn in ((base_name, base_fn), (fast_name, fast_fn)):
                if kind == "window":
                    flops = window_flops(T)
                    too_big = name == "dense" and HEADS * T * T * 4 * mult > DENSE_LIMIT_BYTES
                else:
                    flops = delta_flops(T, name == "chunked", chunk, ssd_form=kind == "ssd")
                    # the per-token scan's backward is the slow side: cap its length for time
                    too_big = name == "recurrent" and mode == "fwd+bwd" and T > max_slow_fb
                key = f"{name}_{mode}"
                if too_big:
                    row[key] = None
                    continue
                print(f"  {kind} T={T} {key} ...", end=" ", flush=True)
                seconds = best_seconds(jax.jit(wrap(fn)), *args, repeats=repeats)
                print(f"{1e3 * seconds:.2f} ms", flush=True)
                row[key] = seconds
                row[f"{key}_gflops"] = mult * flops / seconds / 1e9
            if row.get(f"{base_name}_{mode}") is not None:
                row[f"speedup_{mode}"] = row[f"{base_name}_{mode}"] / row[f"{fast_name}_{mode}"]
        if row.get(f"{base_name}_fwd") is not None:
            # the speed only counts if the fast form still computes the same thing on this device
            want, got = jax.jit(base_fn)(*args), jax.jit(fast_fn)(*args)
            row["rel_rms_error"] = float(jnp.sqrt(jnp.mean((got - want) ** 2) / jnp.mean(want**2)))
        rows.append(row)
        summary = "  ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
            if k not in ("op",) and not k.endswith("gflops")
        )
        print(f"[{kind}] {summary}", flush=True)
    return rows


def table(rows: list[dict], peak: float) -> str:
    lines = []
    for kind in dict.fromkeys(r["op"] for r in rows):
        base, _, fast, _, _ = op_functions(kind)
        lines += [
            f"\n{kind}: {base} vs {fast} (ms; GFLOP/s of {fast} and % of matmul peak)\n",
            f"| T | {base} fwd | {fast} fwd | speedup | {fast} GFLOP/s (%) | {base} f+b "
            f"| {fast} f+b | speedup | {fast} f+b GFLOP/s (%) | rel. RMS error |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["op"] == kind):
            cells = [str(r["T"])]
            for mode in ("fwd", "fwd+bwd"):
                b, f = r.get(f"{base}_{mode}"), r[f"{fast}_{mode}"]
                g = r[f"{fast}_{mode}_gflops"]
                cells += [
                    "n/a" if b is None else f"{1e3 * b:.2f}",
                    f"{1e3 * f:.2f}",
                    "n/a" if b is None else f"{b / f:.2f}x",
                    f"{g:.1f} ({100 * g / peak:.0f}%)",
                ]
            err = r.get("rel_rms_error")
            cells.append("n/a" if err is None else f"{err:.1e}")
            lines.append("| " + " | ".join(cells) + " |")
        timed = [r for r in rows if r["op"] == kind]
        by_T = {r["T"]: r for r in timed}
        if 8192 in by_T and 32768 in by_T:
            growth = by_T[32768][f"{fast}_fwd"] / by_T[8192][f"{fast}_fwd"]
            lines.append(f"\n{fast} forward time 32k / 8k: {growth:.2f} (linear = 4)")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    lengths = [int(x) for x in FLAGS.lengths]
    check_known("ops", FLAGS.ops, OPS)
    peak = matmul_gflops(FLAGS.repeats, FLAGS.precision)
    device = jax.devices()[0]
    print(
        f"measured fp32 matmul (4096^2, precision {FLAGS.precision}): {peak:.1f} GFLOP/s on "
        f"{device.device_kind} ({jax.__version__}) with XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '').strip()}",
        flush=True,
    )
    rows = []
    for kind in FLAGS.ops:
        rows += bench_op(
            kind,
            lengths,
            FLAGS.repeats,
            FLAGS.max_recurrent_backward,
            FLAGS.precision,
            FLAGS.ssd_chunk,
        )
    result = {
        "benchmark": "kernels",
        "machine": machine(),
        "device": device.device_kind,
        "jax": jax.__version__,
        "precision": FLAGS.precision,
        "matmul_gflops": peak,
        "rows": rows,
    }
    name = "kernels" if device.platform == "cpu" else f"kernels_{device.platform}_{FLAGS.precision}"
    print(f"wrote {write_result(name, result)}")
    print(f"\nmatmul peak {peak:.1f} GFLOP/s" + table(rows, peak))


if __name__ == "__main__":
    define_flags()
    app.run(main)
