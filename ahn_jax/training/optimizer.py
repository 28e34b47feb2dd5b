"""The optimizer of the trained weights (the AHN weights; the base's when pretraining): AdamW,
linear warmup + cosine decay, global-norm clipping.

Weight decay skips what the reference marks `_no_weight_decay` (A_log, D, dt_bias) and what the HF
trainer exempts by name (biases, norm weights), docs/method.md §Training.
"""

from __future__ import annotations

import jax
import optax

from ahn_jax.config import TrainConfig

# The reference's `_no_weight_decay` parameters (the AHN memories' decay and skip terms).
NO_DECAY = ("A_log", "D", "dt_bias")


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float = 0.1):
    warmup = max(int(round(warmup_fraction * total_steps)), 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def parameter_names(path) -> list[str]:
    """The names along a pytree path: dict keys and attributes, less an nnx Variable's `.value`
    (flax 0.12 flattens an nnx.State's leaf to `(..., DictKey(name), GetAttrKey('value'))`: the
    parameter's own name is the key before it)."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            names.append(key.name)
    if names and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        names.pop()
    return names


def decays(path) -> bool:
    """Whether the parameter at `path` decays: not one of NO_DECAY, not a bias (`*bias`: q/k/v
    biases, Mamba2's dt_proj_bias and g_proj_bias), not a norm's weight (a name along the path
    containing "norm": `o_norm`, `norm`, `final_norm/scale`)."""
    names = parameter_names(path)
    if not names:
        return True
    name = names[-1]
    exempt = name in NO_DECAY or name.endswith("bias") or any("norm" in n for n in names)
    return not exempt


def decay_mask(params):
    """True for the weights that decay (see `decays`), on plain dicts and nnx States alike."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


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
