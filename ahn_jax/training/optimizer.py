"""The optimizer of the AHN weights: AdamW, linear warmup + cosine decay, global-norm clipping.

Weight decay skips what the reference marks `_no_weight_decay` (A_log, D, dt_bias) and what the HF
trainer exempts by name (biases, norm weights), docs/method.md §Training.
"""

from __future__ import annotations

import jax
import optax

from ahn_jax.config import TrainConfig

NO_DECAY = ("A_log", "D", "dt_bias", "dt_proj_bias", "g_proj_bias", "o_norm", "norm")


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float = 0.1):
    warmup = max(int(round(warmup_fraction * total_steps)), 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def decay_mask(params):
    """True for weights that decay: every leaf whose name is not in NO_DECAY."""

    def decays(path, _):
        return getattr(path[-1], "key", None) not in NO_DECAY

    return jax.tree_util.tree_map_with_path(decays, params)


def optimizer_for(train_config: TrainConfig, *, b1: float = 0.9, b2: float = 0.999):
    """(optimizer, learning-rate schedule) from a config's `train` section: global-norm clipping,
    then AdamW on the schedule with the no-decay mask."""
    t = train_config
    schedule = learning_rate_schedule(t.learning_rate, t.steps, t.warmup_fraction)
    tx = optax.chain(
        optax.clip_by_global_norm(t.max_grad_norm),
        optax.adamw(schedule, b1=b1, b2=b2, weight_decay=t.weight_decay, mask=decay_mask),
    )
    return tx, schedule
