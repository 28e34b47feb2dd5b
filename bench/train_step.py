"""The distillation step against plain training of the same model, side by side in one run.

  python bench/train_step.py [--models=tiny,50m] [--lengths=2048,8192] [--repeats=2]
  python bench/train_step.py --batch=4 --rounds=5 ...   # + per-row windows against one window
  JAX_PLATFORMS=cuda python bench/train_step.py ...   # on a GPU

distill: `ahn_jax.training.step.make_train_step` as training runs it: teacher forward (full
  attention, no gradient) + student forward (sinks + window + AHN-GDN) + backward to the AHN
  weights + AdamW, KL loss tiled over sequence and vocabulary; W = 512, S = 32 for every row.
distill_per_row (with --batch > 1): the same step with a different (W, S) per row, from PER_ROW
  (W + S at most the one window's, so the blocked attention visits the same key blocks): the cost
  of per-row windows themselves. It alternates with `distill` for --rounds rounds; the ratio
  reported is the median of the per-round ratios (this machine is shared and noisy).
plain: a full-attention forward + backward of the same model with gradients for every weight
  (next-token cross-entropy through the same tiled loss), no optimizer: what ordinary training of
  the base costs per token.
Batch --batch (default 1), fp32 weights and activations on CPU (bf16 on GPU). Reported: tokens/s
(best of `--repeats` after a warm-up) and XLA's compile-time memory analysis (arguments +
temporaries) of each step.
"""

from __future__ import annotations

import _paths  # first: keeps bench/kernels.py from shadowing the kernels package

_paths.cpu_unless_told()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import best_seconds, check_known, device_and_dtype, machine, write_result  # noqa: E402
from flax import nnx  # noqa: E402

from ahn_jax.config import TrainConfig, make_config, validate_config  # noqa: E402
from ahn_jax.model.memory import AhnParam  # noqa: E402
from ahn_jax.model.transformer import init_model  # noqa: E402
from ahn_jax.training import losses  # noqa: E402
from ahn_jax.training.optimizer import optimizer_for  # noqa: E402
from ahn_jax.training.step import make_train_step  # noqa: E402

WINDOW, SINKS = 512, 32
# (W, S) of the rows of distill_per_row, cycled: W + S from 64 to WINDOW + SINKS, sinks 0 or 32
PER_ROW = ((WINDOW, SINKS), (224, 32), (128, 0), (32, 32))
MODELS = {
    # configs/tiny_gdn.py's model
    "tiny": dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_layers=4,
                 num_heads=2, num_kv_heads=1, head_dim=64, tie_word_embeddings=True),
    # ~50 M parameters, Qwen2.5's proportions
    "50m": dict(vocab_size=50304, hidden_size=512, intermediate_size=1536, num_layers=8,
                num_heads=8, num_kv_heads=2, head_dim=64, tie_word_embeddings=True),
}  # fmt: skip

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("models", ["tiny", "50m"],
                      f"models to time, comma-separated, from {sorted(MODELS)}")  # fmt: skip
    flags.DEFINE_list("lengths", ["2048", "8192"], "sequence lengths T, comma-separated")
    flags.DEFINE_integer("repeats", 2, "timed steps per measurement (the best is kept)")
    flags.DEFINE_integer("batch", 1, "rows per step; > 1 adds distill_per_row")
    flags.DEFINE_integer("rounds", 3, "alternating rounds of distill and distill_per_row")


def build(name: str, length: int, dtype: str, rows: int):
    model_settings = {**MODELS[name], "param_dtype": dtype, "dtype": dtype, "remat_policy": "full",
                      "max_position_embeddings": max(length, 32768)}  # fmt: skip
    config = make_config(model_settings, ahn_type="gdn",
                         train=dict(seq_len=length, seq_tile=512, vocab_tile=8192, steps=10),
                         data=dict(cutoff_len=length))  # fmt: skip
    model = init_model(validate_config(config), seed=0, ahn_output_init="normal")
    train = TrainConfig.from_dict(config.train.to_dict())
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, model.config.vocab_size, (rows, length)), jnp.int32)
    return train, model, {"input_ids": ids, "labels": ids}


def distill_step(train, model, batch, per_row: bool = False):
    graphdef, trainable, frozen = nnx.split(model, AhnParam, ...)
    tx, schedule = optimizer_for(train)
    step = make_train_step(graphdef, tx, schedule, train)
    opt_state = tx.init(trainable)
    rows = batch["input_ids"].shape[0]
    pairs = [PER_ROW[i % len(PER_ROW)] if per_row else (WINDOW, SINKS) for i in range(rows)]
    bounds = {"window": jnp.asarray([w for w, _ in pairs], jnp.int32),
              "sinks": jnp.asarray([s for _, s in pairs], jnp.int32)}  # fmt: skip
    args = (frozen, {**batch, **bounds}, jnp.int32(3))

    def run():
        # the step donates its state: hand it fresh copies so that every call is the same work
        fresh = jax.tree.map(jnp.copy, (trainable, opt_state))
        return step(*fresh, *args)

    lowered = step.lower(trainable, opt_state, *args)
    return run, lowered


def plain_step(t, model, batch):
    graphdef, params = nnx.split(model)

    def loss(params, ids):
        m = nnx.merge(graphdef, params)
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        hidden, _ = m.hidden_states(ids, positions, mode="full")
        targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
        valid = jnp.arange(ids.shape[1])[None, :] < ids.shape[1] - 1
        value, _ = losses.cross_entropy(hidden, m.lm_head_DV(), targets, valid,
                                        seq_tile=t.seq_tile, vocab_tile=t.vocab_tile)  # fmt: skip
        return value

    step = jax.jit(jax.value_and_grad(loss))
    ids = batch["input_ids"]
    return (lambda: step(params, ids)), step.lower(params, ids)


def memory_bytes(lowered) -> int:
    analysis = lowered.compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes


def per_row_ratio(train, model, batch) -> float:
    """Median over alternating rounds of (step time with per-row windows) / (with one window)."""
    one, _ = distill_step(train, model, batch)
    per_row, _ = distill_step(train, model, batch, per_row=True)
    ratios = []
    for _ in range(FLAGS.rounds):
        base = best_seconds(one, repeats=FLAGS.repeats)
        ratios.append(best_seconds(per_row, repeats=FLAGS.repeats) / base)
    return float(np.median(ratios))


def main(argv) -> None:
    del argv
    check_known("models", FLAGS.models, MODELS)
    lengths = [int(x) for x in FLAGS.lengths]
    device, dtype = device_and_dtype()
    rows = []
    for name in FLAGS.models:
        for length in lengths:
            train, model, batch = build(name, length, dtype, FLAGS.batch)
            row = {"model": name, "T": length, "batch": FLAGS.batch,
                   "params": sum(x.size for x in jax.tree.leaves(nnx.state(model)))}  # fmt: skip
            for kind, make in (("plain", plain_step), ("distill", distill_step)):
                run, lowered = make(train, model, batch)
                row[f"{kind}_bytes"] = memory_bytes(lowered)
                seconds = best_seconds(run, repeats=FLAGS.repeats)
                row[f"{kind}_tokens_per_s"] = FLAGS.batch * length / seconds
                print(f"  {name} T={length} {kind}: {seconds:.3f} s, "
                      f"{FLAGS.batch * length / seconds:,.0f} tok/s, "
                      f"{row[f'{kind}_bytes'] / 2**20:,.0f} MiB", flush=True)  # fmt: skip
            row["distill_over_plain_time"] = row["plain_tokens_per_s"] / row["distill_tokens_per_s"]
            if FLAGS.batch > 1:
                row["per_row_over_one_window_time"] = per_row_ratio(train, model, batch)
                print(
                    f"  {name} T={length} per-row / one window: "
                    f"{row['per_row_over_one_window_time']:.3f}",
                    flush=True,
                )
            rows.append(row)
    result = {"benchmark": "train_step", "machine": machine(), "device": device.device_kind,
              "jax": jax.__version__, "dtype": dtype, "window": WINDOW, "sinks": SINKS,
              "per_row": PER_ROW, "rows": rows}  # fmt: skip
    suffix = "" if device.platform == "cpu" else f"_{device.platform}"
    print(f"wrote {write_result('train_step' + suffix, result)}\n")
    print("| model | params | T | B | plain tok/s | distill tok/s | distill time / plain | "
          "per-row / one window | plain MiB | distill MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_row = r.get("per_row_over_one_window_time")
        print(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['T']} | {r['batch']} | "
              f"{r['plain_tokens_per_s']:,.0f} | {r['distill_tokens_per_s']:,.0f} | "
              f"{r['distill_over_plain_time']:.2f}x | "
              f"{'-' if per_row is None else f'{per_row:.3f}'} | "
              f"{r['plain_bytes'] / 2**20:,.0f} | {r['distill_bytes'] / 2**20:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    define_flags()
    app.run(main)
