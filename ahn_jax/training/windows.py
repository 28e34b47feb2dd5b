"""Per-row window and sink sampling for self-distillation (docs/method.md §Training).

For each row b of a batch, with L_b its own length as the reference's model sees it (never the
batch's padded length):
  random  W_tot uniform over the candidates in `window_choices` with L_b/8 < W_tot < L_b, then S
          uniform over `sink_choices` with S <= W_tot / 2, and W = W_tot - S (the reference's
          `sliding_window_type=random`, `ahn_position=random`);
  fixed   W = `window`, S = `sinks`;
  linear  W_tot = max(L_b // 4, 512), S = `sinks`, W = W_tot - S.
The reference runs one sequence per device, so every sequence of a global batch draws its own
pair; one pair per padded batch would pin W_tot to the largest candidates and never train small
windows. Its L is the length of that one-row batch, which LLaMA-Factory's training collator pads
to a multiple of 8 (`pad_to_multiple_of=8` in its SFT workflow): so L_b here is the row's token
count rounded up to a multiple of COLLATOR_PAD_MULTIPLE. For 1,020 tokens the reference sees
1,024, and 128 = 1,024 / 8 is then not a candidate.
A row's draw depends only on (seed, step, global row index): a resumed run, another mesh or
another process count draws the same values for the same rows. The pairs reach the train step
as traced [B] int32 arrays, so new draws do not recompile it.
"""

from __future__ import annotations

import numpy as np

from ahn_jax.config import SINK_CHOICES, WINDOW_CHOICES, ConfigError
from ahn_jax.config.run import WINDOW_SAMPLINGS, DataConfig, TrainConfig
from ahn_jax.config.windows import sinks_allowed

# LLaMA-Factory's training collator pads each batch to a multiple of this (its SFT workflow)
COLLATOR_PAD_MULTIPLE = 8


def reference_lengths(lengths) -> np.ndarray:
    """The lengths [B] the reference's model sees: each row's token count rounded up to a multiple
    of COLLATOR_PAD_MULTIPLE (one sequence per device, padded by the collator)."""
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    return -(-lengths // COLLATOR_PAD_MULTIPLE) * COLLATOR_PAD_MULTIPLE


def sample_windows(
    lengths,
    *,
    seed: int,
    step: int,
    kind: str = "random",
    window: int = 256,
    sinks: int = 0,
    window_choices=WINDOW_CHOICES,
    sink_choices=SINK_CHOICES,
    row_offset: int = 0,
    row_stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(W [B], S [B]) int32 for rows of `lengths` [B] tokens (unpadded; the rules read them as the
    reference does, `reference_lengths`); W excludes the sinks.

    Row b is global row `row_offset + b * row_stride` of the step's batch (a process passes where
    its rows sit in the global batch, so its draws equal a single process's). A "random" row with
    no admissible W_tot (L_b too short for every candidate) is not an error: it gets W = L_b,
    S = 0, which leaves it no position in the memory's reach (`rows_without_window` counts it)."""
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if kind == "fixed":
        return _filled(lengths, window), _filled(lengths, sinks)
    if kind == "linear":
        totals = np.maximum(reference_lengths(lengths) // 4, 512)
        return (totals - sinks).astype(np.int32), _filled(lengths, sinks)
    if kind != "random":
        raise ConfigError(f"train.window_sampling must be one of {WINDOW_SAMPLINGS}, got {kind!r}")
    pairs = [
        _random_pair(
            int(seen),
            int(length),
            seed,
            step,
            row_offset + b * row_stride,
            window_choices,
            sink_choices,
        )  # fmt: skip
        for b, (seen, length) in enumerate(zip(reference_lengths(lengths), lengths, strict=True))
    ]
    window_B = np.asarray([w for w, _ in pairs], np.int32).reshape(-1)
    sinks_B = np.asarray([s for _, s in pairs], np.int32).reshape(-1)
    return window_B, sinks_B


def memory_rows(lengths, window_B, sinks_B) -> np.ndarray:
    """[B] bool: the rows with a position t >= W + S inside their unpadded length, where the
    memory is active and the loss counts. The others (rows too short for any candidate, or for a
    fixed / linear window) have nothing to learn from."""
    return np.asarray(window_B) + np.asarray(sinks_B) < np.asarray(lengths)


def rows_without_window(lengths, window_B, sinks_B) -> int:
    """How many rows have no position in the memory's reach (not `memory_rows`)."""
    return int(np.sum(~memory_rows(lengths, window_B, sinks_B)))


def lengths_that_learn(lengths, t: TrainConfig) -> np.ndarray:
    """[B] bool: whether a row of each of `lengths` tokens can have a position past its W + S with
    t's window settings (`memory_rows`): for "fixed" and "linear" the one pair `sample_windows`
    gives it, for "random" any of its admissible candidates (`_admissible`)."""
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if t.window_sampling != "random":
        window, sinks = sample_windows(lengths, seed=0, step=0, kind=t.window_sampling,
                                       window=t.window, sinks=t.sinks)  # fmt: skip
        return memory_rows(lengths, window, sinks)
    choices = np.asarray(t.window_choices, np.int64)[:, None]
    candidates = _admissible(reference_lengths(lengths), choices)
    return np.any(candidates & memory_rows(lengths, choices, 0), axis=0)


def _admissible(seen, choices):
    """Which W + S `choices` a row the reference sees as `seen` tokens may draw: L/8 < W + S < L
    (plain ints per drawn row, arrays broadcast for the start-up check)."""
    return (seen / 8 < choices) & (choices < seen)


def check_some_row_learns(t: TrainConfig, d: DataConfig) -> None:
    """ConfigError when no row the data can make (more than `data.filter_len` tokens, at most
    `data.cutoff_len`) has a position past its W + S: every step would log loss 0 and the run
    would export untrained weights. Pretraining reads no window."""
    longest = d.cutoff_len
    shortest = min(d.filter_len + 1, longest)  # chat samples past filter_len are cut to cutoff
    if t.objective == "pretrain" or lengths_that_learn(range(shortest, longest + 1), t).any():
        return
    settings = {
        "random": f"train.window_choices {tuple(t.window_choices)} (W + S with L/8 < W + S < L)",
        "fixed": f"train.window {t.window} + train.sinks {t.sinks}",
        "linear": "train.window_sampling 'linear' (W + S = max(L/4, 512))",
    }[t.window_sampling]
    raise ConfigError(
        f"no training row can reach the memory: rows have {shortest}-{longest} tokens "
        f"(data.filter_len {d.filter_len} < L <= data.cutoff_len {d.cutoff_len}) and "
        f"{settings} leaves none of them a position past its W + S, so every step would train "
        "nothing (loss 0). Choose windows below the rows' lengths, or longer rows"
    )


def _random_pair(seen, length, seed, step, row, window_choices, sink_choices) -> tuple[int, int]:
    """A row's (W, S) from the length the reference sees, `seen`; a row without a candidate gets a
    window over its `length` tokens."""
    totals = [c for c in window_choices if _admissible(seen, c)]
    if not totals:  # no candidate fits this row: a window over all of it (no memory position)
        return max(length, 1), 0
    rng = np.random.default_rng([seed, step, row])
    total = int(totals[rng.integers(len(totals))])
    sink_options = [s for s in sink_choices if sinks_allowed(s, total)]
    chosen = int(sink_options[rng.integers(len(sink_options))]) if sink_options else 0
    return total - chosen, chosen


def _filled(lengths: np.ndarray, value: int) -> np.ndarray:
    return np.full(lengths.shape, value, np.int32)
