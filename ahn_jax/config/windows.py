"""Which attention windows a training config fixes: the rule each row's window draw follows
(training/windows.py) and the one (W, S) pair an AHN export records and `costs --config` reads."""

from __future__ import annotations

from ahn_jax.config.run import TrainConfig


def sinks_allowed(sinks: int, total: int) -> bool:
    """Whether a row whose W + S is `total` may keep `sinks` sinks: at most half of it, the
    reference's draw."""
    return sinks <= total / 2


def fixed_window(train: TrainConfig) -> tuple[int, int, str] | None:
    """(W, S, the settings they come from) where training fixes them: "fixed" sampling, or
    "random" with a single W + S and a single S choice (S kept where `sinks_allowed` keeps it,
    else 0, as each row's draw does); None where training draws several, derives them from each
    row's length ("linear"), or pretrains (full attention, no window)."""
    if train.objective == "pretrain":
        return None
    if train.window_sampling == "fixed":
        return train.window, train.sinks, "train.window / train.sinks"
    single = len(train.window_choices) == 1 and len(train.sink_choices) == 1
    if train.window_sampling != "random" or not single:
        return None
    (total,), (sinks,) = train.window_choices, train.sink_choices
    sinks = sinks if sinks_allowed(sinks, total) else 0
    return total - sinks, sinks, "train.window_choices / train.sink_choices (one each)"
