"""Decode cost against context length: full attention vs sinks + window vs AHN (tiny model, CPU).

  python bench/decode.py [--lengths=1024,2048,...] [--steps=32] [--repeats=3]

For each context length L the prompt (random bytes) is prefilled through the real chunked
prefill, then `--steps` greedy decode steps are timed (best of `--repeats`, after a warm-up step
that compiles) for the three modes side by side, and the cache's bytes are read off the cache
itself. The step is the one `ahn_jax.inference.generate` runs: the model as `for_decoding` holds it,
state and cache passed as flat lists, the cache donated (bench/ragged_decode.py's `greedy_step`).
The tiny_gdn config (4 layers, d 128, 2 / 1 heads) with S = 32 sinks and W = 992: the windowed
caches hold S + W = 1024 tokens. Writes bench/results/decode.json and decode.png.
"""

from __future__ import annotations

import os
import time

import _paths  # noqa: F401  - first: keeps bench/kernels.py from shadowing the kernels package

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from common import RESULTS, machine, write_result
from flax import nnx
from ragged_decode import greedy_step

from ahn_jax.config import MODES, load_config_file, validate_config
from ahn_jax.costs.table import MODE_STYLES
from ahn_jax.model import transformer as model_lib
from ahn_jax.model.layerwise import for_decoding

SINKS, WINDOW = 32, 992

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("lengths", "1024,2048,4096,8192,16384,32768,65536",
                      "context lengths L, comma-separated")  # fmt: skip
    flags.DEFINE_integer("steps", 32, "decode steps timed per measurement")
    flags.DEFINE_integer("repeats", 3, "timed runs of --steps steps (the best is kept)")


def time_decode(model, ids, mode, steps, repeats):
    L = ids.shape[1]
    window, sinks = (L + steps + 1, 0) if mode == "full" else (WINDOW, SINKS)
    cache = model.init_cache(1, window=window, sinks=sinks, mode=mode)
    logits, cache = model.prefill(ids, cache, chunk_size=1024, donate=True)
    graphdef, state = nnx.split(model)
    state_leaves, state_tree = jax.tree.flatten(state)
    cache_leaves, cache_tree = jax.tree.flatten(cache)
    trees = (state_tree, cache_tree)
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # compiles (on a copy: the step spends the cache it is given)
    jax.block_until_ready(
        greedy_step(graphdef, trees, state_leaves, first, [jnp.copy(x) for x in cache_leaves])
    )
    best = float("inf")
    for _ in range(repeats):
        tokens, leaves = first, [jnp.copy(x) for x in cache_leaves]
        jax.block_until_ready(leaves)
        start = time.perf_counter()
        for _ in range(steps):
            tokens, leaves = greedy_step(graphdef, trees, state_leaves, tokens, leaves)
        jax.block_until_ready((tokens, leaves))
        best = min(best, (time.perf_counter() - start) / steps)
    return best, cache.nbytes()


def main(argv):
    del argv
    lengths = [int(x) for x in FLAGS.lengths]
    config = validate_config(load_config_file("configs/tiny_gdn.py"))
    model = model_lib.init_model(config, seed=0, ahn_output_init="normal")
    model = for_decoding(model)  # as ahn_jax.inference.generate holds it
    rows = []
    for L in lengths:
        ids = jnp.asarray(np.random.default_rng(L).integers(0, 256, (1, L)), jnp.int32)
        row = {"length": L}
        for mode in MODES:
            seconds, nbytes = time_decode(model, ids, mode, FLAGS.steps, FLAGS.repeats)
            row[mode] = {"ms_per_token": 1e3 * seconds, "cache_bytes": nbytes}
        rows.append(row)
        print(
            f"L={L:6d} "
            + "  ".join(
                f"{m}: {row[m]['ms_per_token']:.2f} ms, {row[m]['cache_bytes'] / 2**20:.2f} MiB"
                for m in MODES
            ),
            flush=True,
        )
    settings = {"lengths": ",".join(FLAGS.lengths), "steps": FLAGS.steps, "repeats": FLAGS.repeats}
    result = {"machine": machine(), "sinks": SINKS, "window": WINDOW, "rows": rows, **settings}
    write_result("decode", result)
    plot(rows)
    print_table(rows)


def plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, ScalarFormatter

    lengths = [r["length"] for r in rows]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:  # swa and ahn nearly coincide: distinct styles keep both visible
        marker, linestyle = MODE_STYLES[mode]
        style = dict(label=mode, linestyle=linestyle, marker=marker, markerfacecolor="none")
        ax_mem.plot(lengths, [r[mode]["cache_bytes"] / 2**20 for r in rows], **style)
        ax_time.plot(lengths, [r[mode]["ms_per_token"] for r in rows], **style)
    titles = ((ax_mem, "cache per sequence", "MiB (log scale)"),
              (ax_time, "decode step (best of the runs)", "ms per token (log scale)"))  # fmt: skip
    for ax, title, ylabel in titles:
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths])
        ax.set_yscale("log")
        # plain numbers at 1, 2, 5 x 10^k: a reader compares 2 MiB with 128, not exponents
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.axvline(SINKS + WINDOW, color="grey", ls=":", lw=1, label="S + W")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    fig.suptitle(f"tiny model (configs/tiny_gdn.py), CPU, batch 1, S={SINKS}, W={WINDOW}")
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "decode.png", dpi=110)


def print_table(rows):
    print("\n| L | full ms/token | swa ms/token | ahn ms/token | ahn / swa | full cache MiB "
          "| swa cache MiB | ahn cache MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = {m: r[m]["ms_per_token"] for m in MODES}
        mib = {m: r[m]["cache_bytes"] / 2**20 for m in MODES}
        print(
            f"| {r['length']} | {ms['full']:.2f} | {ms['swa']:.2f} | {ms['ahn']:.2f} | "
            f"{ms['ahn'] / ms['swa']:.2f}x | {mib['full']:.2f} | {mib['swa']:.3f} | "
            f"{mib['ahn']:.3f} |"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
