"""Scoring the miniature reproduction: loss on recalled letters, on keys and on plain text.

Held-out plays are cut into windows with their own key/recall pairs (a fixed seed per play); a
model's next-byte loss is averaged per play over three kinds of predicted byte: the recalled letters
(which only a model that sees or remembers the key can predict), the keys' letters (random: the
same baseline for every mode, ln 26 .. ln 11 for distinct capitals) and ordinary text at positions
beyond S + W (where the memory acts). Error bars are standard errors over plays, not over
windows: windows of one play share scenes and are not independent.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ahn_jax.training import data
from ahn_jax.training.recall_pairs import (
    KEY_LETTER,
    ORDINARY,
    RECALL_LETTER,
    RecallSpec,
    insert_recall,
)

KINDS = {"recall": RECALL_LETTER, "key": KEY_LETTER, "text": ORDINARY}


def play_windows(text: str, length: int, spec: RecallSpec, count: int, seed: int):
    """(ids [count, length], kinds [count, length]) from evenly spaced places of one play."""
    stream = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    if len(stream) < 2 * length:
        raise ValueError(f"a text of {len(stream)} bytes is too short for {length}-byte windows")
    rng = np.random.default_rng(seed)
    starts = np.linspace(0, len(stream) - length, count).astype(int)
    pairs = [insert_recall(stream[s : s + length], length, spec, rng) for s in starts]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def held_out_windows(plays, length: int, spec: RecallSpec, count: int, seed: int) -> dict:
    """Play -> `play_windows` of each held-out play, play i's pairs from seed + i: the windows the
    demo's table and its ablations are scored on."""
    texts = data.shakespeare_texts()
    return {p: play_windows(texts[p], length, spec, count, seed + i) for i, p in enumerate(plays)}


def next_byte_losses(model, ids: np.ndarray, mode: str, window: int, sinks: int, batch: int = 16):
    """Loss of predicting byte t + 1 at every position t: [N, L - 1]."""
    kwargs = {} if mode == "full" else dict(window=window, sinks=sinks)
    out = []
    for start in range(0, len(ids), batch):
        chunk = jnp.asarray(ids[start : start + batch])
        log_probs = jax.nn.log_softmax(model(chunk, mode=mode, **kwargs)[:, :-1], axis=-1)
        out.append(np.asarray(-jnp.take_along_axis(log_probs, chunk[:, 1:, None], axis=-1)[..., 0]))
    return np.concatenate(out)


def kind_means(losses: np.ndarray, kinds: np.ndarray, beyond: int) -> dict[str, float]:
    """Mean loss per kind of predicted byte; plain text only at positions >= `beyond` (S + W)."""
    target_kinds = kinds[:, 1:]
    positions = np.arange(1, kinds.shape[1])[None, :]
    means = {}
    for name, kind in KINDS.items():
        mask = target_kinds == kind
        if name == "text":
            mask &= positions >= beyond
        means[name] = float(losses[mask].mean())
    return means


@dataclasses.dataclass(frozen=True)
class Estimate:
    mean: float
    stderr: float

    @classmethod
    def over(cls, values) -> Estimate:
        values = np.asarray(values, float)
        spread = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        return cls(float(values.mean()), float(spread))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.stderr:.3f}"


def gap_closed(per_play: dict[str, dict[str, dict[str, float]]], mode: str, kind: str = "recall"):
    """Fraction of the swa - full loss gap that `mode` closes, per play, as an Estimate."""
    fractions = []
    for play, by_mode in per_play.items():
        full, swa, this = (by_mode[m][kind] for m in ("full", "swa", mode))
        if swa - full <= 0:
            raise ValueError(f"{play}: no {kind} gap to close (swa {swa:.3f} <= full {full:.3f})")
        fractions.append((swa - this) / (swa - full))
    return Estimate.over(fractions)


# the chance level a model's recalled letters are measured from: its own loss on the keys'
# letters, or full attention's (the data's; stricter when the AHN is worse on the keys)
BASELINES = ("own", "full")


def margin_share(per_play, mode: str, baseline: str = "own") -> Estimate:
    """The share of full attention's margin below chance on the recalled letters that `mode`
    reaches, per play: (chance - recall of mode) / (full's keys - full's recall), chance being
    `mode`'s own keys' loss or full attention's (BASELINES)."""
    shares = []
    for by_mode in per_play.values():
        full = by_mode["full"]
        chance = by_mode["full" if baseline == "full" else mode]["key"]
        shares.append((chance - by_mode[mode]["recall"]) / (full["key"] - full["recall"]))
    return Estimate.over(shares)
