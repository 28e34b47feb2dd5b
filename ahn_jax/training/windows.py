"""Per-step window and sink sampling for self-distillation (docs/method.md §Training).

  random  W_tot uniform over the powers of two in `window_choices` with L/8 < W_tot < L, then S
          uniform over `sink_choices` with S <= W_tot / 2, and W = W_tot - S (the reference's
          `sliding_window_type=random`, `ahn_position=random`);
  fixed   W = `window`, S = `sinks`;
  linear  W_tot = max(L / 4, 512), S = `sinks`, W = W_tot - S.
L is the batch's sequence length. Draws depend only on (seed, step), so a resumed run samples the
same values, and W and S reach the train step as traced scalars: no recompilation.
"""

from __future__ import annotations

import numpy as np

from ahn_jax.config import SINK_CHOICES, WINDOW_CHOICES, ConfigError
from ahn_jax.config.run import WINDOW_SAMPLINGS


def sample_window(
    seed: int,
    step: int,
    length: int,
    *,
    kind: str = "random",
    window: int = 256,
    sinks: int = 0,
    window_choices=WINDOW_CHOICES,
    sink_choices=SINK_CHOICES,
) -> tuple[int, int]:
    """(W, S) for one step."""
    if kind == "fixed":
        return window, sinks
    if kind == "linear":
        total = max(length // 4, 512)
        return total - sinks, sinks
    if kind != "random":
        raise ConfigError(f"train.window_sampling must be one of {WINDOW_SAMPLINGS}, got {kind!r}")
    rng = np.random.default_rng([seed, step])
    totals = [c for c in window_choices if length / 8 < c < length]
    if not totals:
        raise ConfigError(
            f"no window in train.window_choices={tuple(window_choices)} lies strictly between "
            f"L/8 and L for sequence length L={length}"
        )
    total = int(rng.choice(totals))
    sink_options = [s for s in sink_choices if s <= total / 2]
    chosen_sinks = int(rng.choice(sink_options)) if sink_options else 0
    return total - chosen_sinks, chosen_sinks
