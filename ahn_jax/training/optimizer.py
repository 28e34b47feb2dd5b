"""The optimizer of the trained weights (the AHN weights; the base's when pretraining): AdamW,
linear warmup + cosine decay, global-norm clipping.

Weight decay follows what the reference's training ran (docs/method.md §Training): the HF Trainer
decays every trained parameter whose name does not contain "bias", "layernorm" or "rmsnorm"
(`Trainer.get_decay_parameter_names`, transformers 4.51). The reference marks A_log, D and dt_bias
`_no_weight_decay` (fla's convention), but the Trainer does not read those marks, so A_log, D and
the AHN's own norm weights (fla's RMSNorm, no "layernorm" in its name) decay there, and here.
"""

from __future__ import annotations

import math

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ahn_jax.config import TrainConfig

# The base's norms (trained only when pretraining): the Trainer exempts Qwen2's
# `input_layernorm` and `post_attention_layernorm` by name; our final norm is exempt too.
BASE_NORMS = ("input_norm", "post_attn_norm", "final_norm")


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float = 0.1):
    """HF's `get_cosine_schedule_with_warmup` as the reference's Trainer builds it: linear from 0
    over ceil(steps x warmup_ratio) steps (`TrainingArguments.get_warmup_steps`, same float
    product), then a cosine to 0; update k uses the value at k."""
    warmup = math.ceil(total_steps * warmup_fraction)  # 0: the cosine from the peak, as HF's
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def rate_change_on_resume(saved_train: dict, t: TrainConfig, step: int) -> str | None:
    """What a resumed run with another schedule (train.steps, learning_rate or warmup_fraction
    changed) does to the learning rate: the schedule is the new settings' from step 0, so the
    next update's rate is the new schedule's at `step` (the checkpoint's step), not what the
    checkpoint's run would have used next; None when the two agree."""

    def schedule_of(train):
        return learning_rate_schedule(train["learning_rate"], train["steps"],
                                      train["warmup_fraction"])  # fmt: skip

    now = {"learning_rate": t.learning_rate, "steps": t.steps, "warmup_fraction": t.warmup_fraction}
    before = schedule_of({**now, **{k: v for k, v in saved_train.items() if k in now}})(step)
    after = schedule_of(now)(step)
    if math.isclose(float(before), float(after), rel_tol=1e-6, abs_tol=1e-12):
        return None
    return (
        f"the learning-rate schedule is the new settings' from step 0: step {step + 1} trains at "
        f"{float(after):.3g} where the checkpoint's schedule gives {float(before):.3g}"
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
    """Whether the parameter at `path` decays: not a bias (a name along the path containing
    "bias": dt_bias, q/k/v biases, Mamba2's dt_proj_bias and g_proj_bias), not a base norm's
    weight (BASE_NORMS). The AHN's A_log, D, o_norm and norm decay, as in the reference's run."""
    names = parameter_names(path)
    return not any("bias" in n.lower() or n in BASE_NORMS for n in names)


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


def init_on_mesh(tx: optax.GradientTransformation, trainable, mesh):
    """`tx.init(trainable)` compiled with the state placed as XLA:SPMD will return it from the
    train step: every moment like its weight (the step's outputs are), scalars such as Adam's count
    on every device. Left to itself, the compiler replicated the moments: every chip held all of
    them until the first step, which then compiled a second time for the placements it returned.
    Without a mesh: `jax.jit(tx.init)`, its outputs committed by the caller."""
    init = jax.jit(tx.init, out_shardings=opt_state_shardings(tx, trainable, mesh))
    return init(trainable)


def opt_state_shardings(tx: optax.GradientTransformation, trainable, mesh):
    """The shardings `init_on_mesh` gives the optimizer state of `trainable` (whose leaves carry
    theirs; abstract ones too); None without a mesh (the compiler's choice)."""
    if mesh is None:
        return None
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(
        tx,
        lambda _, weight: weight.sharding,
        jax.eval_shape(tx.init, trainable),
        trainable,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
