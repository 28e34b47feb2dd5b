"""Prefill and decode at long context on one accelerator: a Qwen2.5-3B-shaped model with random
weights (configs/qwen3b_gdn.py's dimensions, bf16; AHN-GDN with a non-zero output projection) in
modes full, swa and ahn. The long-context row of the accelerator issue's GPU check.

  JAX_PLATFORMS=cuda python bench/long_context.py [--lengths=32768,65536,131072]
      [--modes=full,swa,ahn] [--steps=16] [--prefill_chunk=512] [--budget_s=420]
  python bench/long_context.py --model=tiny --lengths=2048,4096 --window=992 --sinks=32   # CPU

For each mode (in order) and length L: an empty cache (full: L + steps + 1 slots; swa and ahn:
S + W; the reference's inference S = 128, W = 32,640 by default, so at L <= S + W the three attend
the same keys), then a compiling one-chunk prefill on a cache of the same shape, then the timed
chunked prefill of L random tokens (`model.prefill`, `--prefill_chunk` tokens per call), then
`--steps` greedy decode steps (the donated, jitted step `ahn_jax.inference.generate` runs) after a
compiling one. Reported: prefill tokens/s, decode ms per token, the cache's bytes, and the device's
memory (`memory_stats`: bytes in use after prefill, and the process's peak so far, which only
ever rises). Runs stop being started after `--budget_s` seconds (the device
machine's time is limited); the ones done are reported. Writes
bench/results/long_context[_<platform>].json.
"""

from __future__ import annotations

import functools
import time

import _paths  # first: keeps bench/kernels.py from shadowing the kernels package

_paths.cpu_unless_told()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import check_known, device_and_dtype, machine, write_result  # noqa: E402
from flax import nnx  # noqa: E402

from ahn_jax.config import MODES, load_config_file, validate_config  # noqa: E402
from ahn_jax.model import transformer as model_lib  # noqa: E402
from ahn_jax.model.layerwise import for_decoding  # noqa: E402

CONFIGS = {"qwen3b": "configs/qwen3b_gdn.py", "tiny": "configs/tiny_gdn.py"}
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("model", "qwen3b", sorted(CONFIGS), "model dimensions (random weights)")
    flags.DEFINE_list("lengths", ["32768", "65536", "131072"], "context lengths L")
    # the AHN modes first: a check cut short by its time limit loses full attention first
    flags.DEFINE_list("modes", ["ahn", "swa", "full"], "modes, comma-separated")
    flags.DEFINE_integer("window", 32640, "W of swa and ahn")
    flags.DEFINE_integer("sinks", 128, "S of swa and ahn")
    flags.DEFINE_integer("steps", 16, "decode steps timed")
    flags.DEFINE_integer("prefill_chunk", 512, "prompt tokens per prefill call")
    flags.DEFINE_float("budget_s", 420.0, "start no run after this many seconds")


def build(name: str, dtype: str, max_length: int):
    config = load_config_file(CONFIGS[name])
    config.model.update(
        param_dtype=dtype,
        dtype=dtype,
        remat_policy="none",
        max_position_embeddings=max(max_length, 32768),
    )
    model = model_lib.init_model(validate_config(config), seed=0, ahn_output_init="normal")
    return for_decoding(model)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def greedy_step(graphdef, state, tokens_B, cache):
    logits, cache = model_lib.decode_step(graphdef, state, tokens_B, cache)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache


def memory(device) -> dict:
    stats = device.memory_stats() or {}  # None on some backends (the CPU)
    return {"bytes_in_use": stats.get("bytes_in_use"), "peak_bytes": stats.get("peak_bytes_in_use")}


def run(model, device, mode: str, L: int) -> dict:
    steps, chunk = FLAGS.steps, FLAGS.prefill_chunk
    window, sinks = (L + steps + 1, 0) if mode == "full" else (FLAGS.window, FLAGS.sinks)
    ids = jnp.asarray(
        np.random.default_rng(L).integers(0, model.config.vocab_size, (1, L)), jnp.int32
    )

    def empty():
        return model.init_cache(1, window=window, sinks=sinks, mode=mode)

    # compile: two chunks (the chunk step and the chunks' joining) and a last, shorter chunk if L
    # is not a multiple of the chunk
    for width in {min(2 * chunk, L), (L - 1) % chunk + 1}:
        jax.block_until_ready(model.prefill(ids[:, :width], empty(), chunk_size=chunk, donate=True))
    cache = jax.block_until_ready(empty())
    start = time.perf_counter()
    logits, cache = model.prefill(ids, cache, chunk_size=chunk, donate=True)  # as generate does
    tokens = jax.block_until_ready(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    prefill_s = time.perf_counter() - start
    after_prefill = memory(device)
    graphdef, state = nnx.split(model)
    cache_bytes = cache.nbytes()
    tokens, cache = jax.block_until_ready(greedy_step(graphdef, state, tokens, cache))  # compiles
    start = time.perf_counter()
    for _ in range(steps):
        tokens, cache = greedy_step(graphdef, state, tokens, cache)
    jax.block_until_ready((tokens, cache))
    decode_s = (time.perf_counter() - start) / steps
    return {
        "mode": mode,
        "L": L,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": L / prefill_s,
        "decode_ms_per_token": decode_s * 1e3,
        "cache_bytes": cache_bytes,
        "after_prefill": after_prefill,
        "after_decode": memory(device),
    }


def main(argv) -> None:
    del argv
    check_known("modes", FLAGS.modes, MODES)
    device, dtype = device_and_dtype()
    lengths = [int(x) for x in FLAGS.lengths]
    started = time.perf_counter()
    model = build(FLAGS.model, dtype, max(lengths) + FLAGS.steps + 1)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    print(
        f"{FLAGS.model}: {params / 1e9:.2f} B parameters, built in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    rows, skipped = [], []
    header = {"benchmark": "long_context", "machine": machine(), "device": device.device_kind,
              "jax": jax.__version__, "dtype": dtype, "model": FLAGS.model, "params": params,
              "window": FLAGS.window, "sinks": FLAGS.sinks, "steps": FLAGS.steps,
              "prefill_chunk": FLAGS.prefill_chunk}  # fmt: skip
    name = "long_context" + ("" if device.platform == "cpu" else f"_{device.platform}")
    print(f"{device.device_kind}, {FLAGS.model} ({params / 1e9:.2f} B), {dtype}, "
          f"S = {FLAGS.sinks}, W = {FLAGS.window}\n\n{TABLE_HEADER}", flush=True)  # fmt: skip
    # mode by mode: swa and ahn reuse one compiled prefill and step at every L (their cache has
    # S + W + 1 slots whatever L), full compiles anew for each
    for mode in FLAGS.modes:
        for L in lengths:
            if time.perf_counter() - started > FLAGS.budget_s:
                skipped.append(f"{mode}@{L}")
                continue
            try:
                rows.append(run(model, device, mode, L))
            except Exception as e:  # noqa: BLE001 - an out-of-memory run is a result too
                rows.append({"mode": mode, "L": L, "error": f"{type(e).__name__}: {e}"[:300]})
            # row by row, and the file after each run: a run cut off by a time limit loses only
            # itself
            print(table_row(rows[-1]), flush=True)
            write_result(name, {**header, "rows": rows, "skipped": skipped})
    path = write_result(name, {**header, "rows": rows, "skipped": skipped})
    if skipped:
        print(f"\nnot started (past --budget_s={FLAGS.budget_s:.0f}): {', '.join(skipped)}")
    print(f"wrote {path}")


TABLE_HEADER = (
    "| L | mode | prefill tok/s | decode ms/token | cache GiB | in use after prefill GiB "
    "| peak so far GiB |\n|---|---|---|---|---|---|---|"
)


def table_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['L']} | {r['mode']} | {r['error'][:80]} | | | | |"

    def gib(x):
        return "n/a" if x is None else f"{x / 2**30:.2f}"

    return (
        f"| {r['L']} | {r['mode']} | {r['prefill_tokens_per_s']:,.0f} | "
        f"{r['decode_ms_per_token']:.2f} | {gib(r['cache_bytes'])} | "
        f"{gib(r['after_prefill']['bytes_in_use'])} | {gib(r['after_decode']['peak_bytes'])} |"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
