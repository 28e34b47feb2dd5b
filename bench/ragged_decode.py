"""A ragged batch of prompts generated together against the same prompts one by one (CPU or GPU).

  python bench/ragged_decode.py [--models=tiny,50m] [--lengths=1024,2048,...,8192] [--steps=32]
      [--repeats=2] [--decode_repeats=3] [--window=992] [--sinks=32]

The prompts (random tokens, one per `--lengths` entry) go through the real chunked prefill
(`model.prefill`, chunks of 1024), right-padded into one [B, max length] batch with `lengths=`
("batched"), or each alone as [1, length] ("one_by_one"); then `--steps` greedy decode steps per
row follow (one jitted step: `model_lib.decode_step` + argmax, fed its own token, as
`ahn_jax.inference.generate` does), all rows at once or each row's in turn. Mode "ahn" with
S = 32 sinks and W = 992 by default, as bench/decode.py (configs/tiny_gdn.py trains on W + S of
64-256: `--window=224` is its largest). Models: "tiny" is configs/tiny_gdn.py (as
bench/decode.py), "50m" bench/train_step.py's ~50 M model, AHN-GDN with a non-zero output
projection.

Compilation is kept out of the timings: before timing, each way prefills one-chunk prompts of each
chunk shape it will meet (a one-by-one prompt whose length is not a multiple of the chunk has a
last chunk of its own shape, compiled there too), runs prefill's eager slicing and joining of
chunks on the same shapes, and a decode step (`JAX_LOG_COMPILES=1` shows no compile while timing).
Then the two ways alternate for `--repeats` rounds (the order flips each round); in each round a
way prefills once and decodes `--decode_repeats` times from its prefilled caches (prefill dominates
the time: a round of the 50m model takes minutes on 2 cores). Each time is the best of its runs and
the spread (slowest / fastest run) is reported, as the machine is shared.
Reported per way: prefill seconds, decode seconds and tokens/s (B x steps / decode time), end-to-end
generated tokens/s (B x steps / (prefill + decode)), and the cache's bytes per row (the batched
cache's bytes / B against a one-row cache's). Writes bench/results/ragged_decode[_<platform>].json.
"""

from __future__ import annotations

import functools
import time

import _paths  # first: keeps bench/kernels.py from shadowing the kernels package

# the CPU unless JAX_PLATFORMS names another platform (as `python -m ahn_jax.generate` runs)
_paths.cpu_unless_told()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import check_known, device_and_dtype, machine, write_result  # noqa: E402
from flax import nnx  # noqa: E402
from train_step import MODELS  # noqa: E402

from ahn_jax.config import load_config_file, make_config, validate_config  # noqa: E402
from ahn_jax.model import transformer as model_lib  # noqa: E402
from ahn_jax.model.layerwise import for_decoding  # noqa: E402

CHUNK = 1024
WAYS = ("batched", "one_by_one")

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("models", ["tiny", "50m"], "models, comma-separated: tiny, 50m")
    flags.DEFINE_list("lengths", [str(1024 * i) for i in range(1, 9)],
                      "prompt lengths, one per row, comma-separated")  # fmt: skip
    flags.DEFINE_integer("steps", 32, "decode steps (new tokens) per row")
    flags.DEFINE_integer("repeats", 2, "alternating rounds of the two ways (the best is kept)")
    flags.DEFINE_integer(
        "decode_repeats", 3, "decode runs from each round's prefilled caches (the best is kept)"
    )
    flags.DEFINE_integer("window", 992, "sliding window W of the cache", lower_bound=1)
    flags.DEFINE_integer("sinks", 32, "attention sinks S of the cache", lower_bound=0)


def build(name: str, dtype: str):
    if name == "tiny":
        config = load_config_file("configs/tiny_gdn.py")
    else:
        settings = {**MODELS[name], "param_dtype": dtype, "dtype": dtype,
                    "max_position_embeddings": 32768}  # fmt: skip
        config = make_config(settings, ahn_type="gdn")
    return model_lib.init_model(validate_config(config), seed=0, ahn_output_init="normal")


# as ahn_jax.inference.generate's step: the model state and the cache passed as flat lists of
# arrays (their tree structures static), the cache donated so XLA writes the new slots in place
@functools.partial(
    jax.jit, static_argnames=("graphdef", "trees"), donate_argnames=("cache_leaves",)
)
def greedy_step(graphdef, trees, state_leaves, tokens_B, cache_leaves):
    state_tree, cache_tree = trees
    state = jax.tree.unflatten(state_tree, state_leaves)
    cache = jax.tree.unflatten(cache_tree, cache_leaves)
    logits, cache = model_lib.decode_step(graphdef, state, tokens_B, cache)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jax.tree.leaves(cache)


@jax.jit
def first_token(logits_BV):
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def generate(model, ids, lengths, steps, decodes):
    """Prefill ids [B, P] (row b's first lengths[b] real; None: all P), then `decodes` times
    `steps` greedy decode steps, each time from the prefilled cache. Returns (prefill seconds,
    [decode seconds], the last run's new tokens [B, steps], cache bytes)."""
    graphdef, state = nnx.split(model)
    cache = model.init_cache(ids.shape[0], window=FLAGS.window, sinks=FLAGS.sinks, mode="ahn")
    jax.block_until_ready(cache)
    start = time.perf_counter()
    # the cache handed over, as generate does: every chunk compiled in place (warm_up)
    logits, prefilled = model.prefill(ids, cache, lengths=lengths, chunk_size=CHUNK, donate=True)
    first = jax.block_until_ready(first_token(logits))
    prefill = time.perf_counter() - start
    state_leaves, state_tree = jax.tree.flatten(state)
    prefilled_leaves, cache_tree = jax.tree.flatten(prefilled)
    decode = []
    for _ in range(decodes):
        tokens, leaves, out = first, [jnp.copy(x) for x in prefilled_leaves], []  # donated
        start = time.perf_counter()
        for _ in range(steps):
            tokens, leaves = greedy_step(
                graphdef, (state_tree, cache_tree), state_leaves, tokens, leaves
            )
            out.append(tokens)
        jax.block_until_ready((tokens, leaves))
        decode.append(time.perf_counter() - start)
    return prefill, decode, np.stack(out, axis=1), prefilled.nbytes()


def batched(model, ids, lengths, steps, decodes):
    prefill, decode, tokens, nbytes = generate(model, ids, lengths, steps, decodes)
    return {"prefill_s": prefill, "decode_s": decode, "tokens": tokens, "cache_bytes": nbytes}


def one_by_one(model, ids, lengths, steps, decodes):
    """Each row alone; its j-th decode run adds to the j-th decode total."""
    prefill, decode, tokens = 0.0, np.zeros(decodes), []
    for row, length in enumerate(lengths):
        p, d, new, nbytes = generate(model, ids[row : row + 1, :length], None, steps, decodes)
        prefill += p
        decode += np.asarray(d)
        tokens.append(new[0])
    return {"prefill_s": prefill, "decode_s": decode.tolist(), "tokens": np.stack(tokens),
            "cache_bytes": nbytes}  # fmt: skip


def warm_up(model, ids, lengths) -> None:
    """Compile what each way runs before timing: a prefill of each distinct chunk shape (batched:
    the padded width's chunks, all rows; one by one: every length's chunks, 1 row), the step that
    joins chunks (a 2-token prompt in chunks of 1), prefill's slicing of each prompt array into
    chunks, and a decode step."""
    rows, width = ids.shape
    for prompt in [ids] + [ids[row : row + 1, :length] for row, length in enumerate(lengths)]:
        for start in range(0, prompt.shape[1], CHUNK):
            jax.block_until_ready(prompt[:, start : start + CHUNK])
    for batch, widths in ((rows, {width}), (1, set(lengths))):
        chunks = {min(w, CHUNK) for w in widths} | {(w - 1) % CHUNK + 1 for w in widths}
        for chunk in sorted(chunks):
            generate(model, ids[:batch, :chunk], None, 1, 1)
        cache = model.init_cache(batch, window=FLAGS.window, sinks=FLAGS.sinks, mode="ahn")
        jax.block_until_ready(model.prefill(ids[:batch, :2], cache, chunk_size=1, donate=True))
    # the batched prefill runs only the rows with prompt left: every smaller batch's chunk, and
    # the taking and putting back of k rows of the cache (lengths 2, 4, ... in chunks of 2)
    for active in range(1, rows):
        generate(model, ids[:active, :CHUNK], None, 1, 1)
    cache = model.init_cache(rows, window=FLAGS.window, sinks=FLAGS.sinks, mode="ahn")
    short = 2 * np.arange(1, rows + 1)
    jax.block_until_ready(
        model.prefill(ids[:, : short.max()], cache, lengths=short, chunk_size=2, donate=True)
    )


def measure(name: str, lengths: list[int], dtype: str) -> dict:
    steps, rounds, decodes = FLAGS.steps, FLAGS.repeats, FLAGS.decode_repeats
    model = for_decoding(build(name, dtype))  # as ahn_jax.inference.generate holds it
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (len(lengths), max(lengths)))
    ids = np.where(np.arange(max(lengths))[None] < np.asarray(lengths)[:, None], ids, 0)
    ids = jnp.asarray(ids, jnp.int32)
    start = time.perf_counter()
    warm_up(model, ids, lengths)
    print(f"{name}: warm-up (compiles) {time.perf_counter() - start:.1f} s", flush=True)
    runs = {way: [] for way in WAYS}
    for round_ in range(rounds):
        for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
            fn = batched if way == "batched" else one_by_one
            runs[way].append(fn(model, ids, np.asarray(lengths, np.int32), steps, decodes))
            r = runs[way][-1]
            print(f"  {name} round {round_} {way}: prefill {r['prefill_s']:.2f} s, decode "
                  f"{', '.join(f'{d:.3f}' for d in r['decode_s'])} s", flush=True)  # fmt: skip
    rows = len(lengths)
    result = {"model": name, "params": sum(x.size for x in jax.tree.leaves(nnx.state(model)))}
    for way in WAYS:
        prefill = [r["prefill_s"] for r in runs[way]]
        decode = [d for r in runs[way] for d in r["decode_s"]]
        total = [r["prefill_s"] + min(r["decode_s"]) for r in runs[way]]
        result[way] = {
            "prefill_s": min(prefill),
            "decode_s": min(decode),
            "decode_tokens_per_s": rows * steps / min(decode),
            "end_to_end_tokens_per_s": rows * steps / min(total),
            "cache_bytes_per_row": runs[way][0]["cache_bytes"] / (rows if way == "batched" else 1),
            "spread": {"prefill": max(prefill) / min(prefill), "decode": max(decode) / min(decode)},
            "prefill_s_rounds": prefill,
            "decode_s_runs": decode,
        }
    b, o = result["batched"], result["one_by_one"]
    result["ratio"] = {
        "prefill_time": b["prefill_s"] / o["prefill_s"],
        "decode_tokens_per_s": b["decode_tokens_per_s"] / o["decode_tokens_per_s"],
        "end_to_end_tokens_per_s": b["end_to_end_tokens_per_s"] / o["end_to_end_tokens_per_s"],
    }
    # fp32 rounding differs between batch shapes, so a near-tie of a random model may flip a token
    same = runs["batched"][0]["tokens"] == runs["one_by_one"][0]["tokens"]
    result["same_tokens_share"] = float(same.mean())
    return result


def main(argv) -> None:
    del argv
    check_known("models", FLAGS.models, MODELS)
    lengths = [int(x) for x in FLAGS.lengths]
    device, dtype = device_and_dtype()
    results = [measure(name, lengths, dtype) for name in FLAGS.models]
    out = {"benchmark": "ragged_decode", "machine": machine(), "device": device.device_kind,
           "jax": jax.__version__, "dtype": dtype, "window": FLAGS.window, "sinks": FLAGS.sinks,
           "chunk": CHUNK, "lengths": lengths, "steps": FLAGS.steps, "repeats": FLAGS.repeats,
           "decode_repeats": FLAGS.decode_repeats,
           "models": results}  # fmt: skip
    suffix = "" if device.platform == "cpu" else f"_{device.platform}"
    print(f"wrote {write_result('ragged_decode' + suffix, out)}\n")
    print_table(results, len(lengths), FLAGS.steps)


def print_table(results, rows: int, steps: int) -> None:
    print(
        f"B = {rows} rows, {steps} new tokens per row, W = {FLAGS.window}, S = {FLAGS.sinks}; "
        "spread = slowest / fastest run\n"
    )
    print("| model | params | way | prefill s | decode s | decode tok/s | end-to-end tok/s "
          "| spread prefill / decode | cache KiB per row |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for way in WAYS:
            w = r[way]
            cells = (
                f"{w['prefill_s']:.2f}",
                f"{w['decode_s']:.3f}",
                f"{w['decode_tokens_per_s']:,.0f}",
                f"{w['end_to_end_tokens_per_s']:,.1f}",
                f"{w['spread']['prefill']:.2f} / {w['spread']['decode']:.2f}",
                f"{w['cache_bytes_per_row'] / 2**10:,.1f}",
            )
            print(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {way} | {' | '.join(cells)} |")
        x = r["ratio"]
        print(f"| {r['model']} | | batched / one by one | {x['prefill_time']:.2f}x (time) | | "
              f"**{x['decode_tokens_per_s']:.2f}x** | **{x['end_to_end_tokens_per_s']:.2f}x** | "
              f"same tokens {r['same_tokens_share']:.0%} | |")  # fmt: skip


if __name__ == "__main__":
    define_flags()
    app.run(main)
