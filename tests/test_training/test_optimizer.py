"""The optimizer: warmup + cosine schedule, global-norm clipping, AdamW as optax's, decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from shared import flat_state, tiny_config

from ahn_jax.config import AHN_TYPES, TrainConfig
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.transformer import abstract_model
from ahn_jax.training.optimizer import decay_mask, learning_rate_schedule, optimizer_for

PEAK, STEPS, WARMUP = 2e-3, 100, 0.2  # 20 warmup steps, then 80 of cosine decay


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    schedule = learning_rate_schedule(PEAK, STEPS, WARMUP)
    lr = np.asarray([float(schedule(step)) for step in range(STEPS + 1)])
    np.testing.assert_allclose(lr[:21], PEAK * np.arange(21) / 20, rtol=1e-6, atol=1e-12)
    progress = (np.arange(20, STEPS + 1) - 20) / 80
    np.testing.assert_allclose(lr[20:], PEAK * 0.5 * (1 + np.cos(np.pi * progress)), atol=1e-9)
    assert lr.max() == pytest.approx(PEAK) and lr[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("steps, warmup", [(25, 0.1), (45, 0.1), (740, 0.1), (741, 0.1),
                                           (744, 0.1), (1000, 0.1), (10, 0.0)])  # fmt: skip
def test_schedule_equals_hfs_cosine_with_warmup_as_the_reference_trainer_builds_it(steps, warmup):
    """transformers' get_cosine_schedule_with_warmup with its Trainer's warmup count,
    ceil(steps x warmup_ratio) (rounding instead moved warmup and cosine by a step: 25 steps
    were 33% of the peak off)."""
    import math

    import torch
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(optimizer, math.ceil(steps * warmup), steps)
    expected = [lr_lambda(k) for k in range(steps) for lr_lambda in hf.lr_lambdas]
    ours = learning_rate_schedule(1.0, steps, warmup)
    np.testing.assert_allclose([float(ours(k)) for k in range(steps)], expected, atol=1e-6)


def test_optimizer_for_reads_the_schedule_from_the_config():
    config = TrainConfig(learning_rate=PEAK, steps=STEPS, warmup_fraction=WARMUP)
    _, schedule = optimizer_for(config)
    reference = learning_rate_schedule(PEAK, STEPS, WARMUP)
    for step in (0, 7, 20, 55, STEPS):
        assert float(schedule(step)) == pytest.approx(float(reference(step)), abs=1e-12)


def _toy_params():
    # plain nested dicts: names the mask exempts ("dt_bias", "final_norm") beside names that decay
    rng = np.random.default_rng(0)
    return {
        "layer": {
            "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "dt_bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        },
        "final_norm": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        "head": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
    }


def _grads(step):
    """Gradients whose global norm moves around max_grad_norm = 1: some steps are clipped."""
    rng = np.random.default_rng(100 + step)
    scale = (30.0, 0.2, 5.0, 0.05, 2.0, 0.7)[step % 6]
    leaves = {
        "layer": {"w": rng.normal(size=(4, 3)), "dt_bias": rng.normal(size=(3,))},
        "final_norm": rng.normal(size=(3,)),
        "head": rng.normal(size=(3, 2)),
    }
    return jax.tree.map(lambda g: jnp.asarray(scale * g / 3.0, jnp.float32), leaves)


def _global_norm(grads) -> float:
    return float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))


def _clipped(grads, max_norm):
    """Global-norm clipping written out: one norm over every leaf together."""
    return jax.tree.map(lambda g: g * min(1.0, max_norm / _global_norm(grads)), grads)


def test_updates_are_optax_adamw_on_globally_clipped_gradients():
    config = TrainConfig(learning_rate=PEAK, steps=12, warmup_fraction=0.25, weight_decay=0.1,
                         max_grad_norm=1.0)  # fmt: skip
    tx, schedule = optimizer_for(config)
    exempt = {"layer": {"w": True, "dt_bias": False}, "final_norm": False, "head": True}
    reference = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=0.1, mask=exempt)
    params = ref_params = _toy_params()
    state, ref_state = tx.init(params), reference.init(ref_params)
    clipped_steps = 0
    for step in range(config.steps):
        grads = _grads(step)
        clipped_steps += _global_norm(grads) > config.max_grad_norm
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = reference.update(
            _clipped(grads, config.max_grad_norm), ref_state, ref_params
        )
        ref_params = optax.apply_updates(ref_params, ref_updates)
        for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7, err_msg=f"step {step}")
    assert 0 < clipped_steps < config.steps  # both sides of the clipping threshold were seen


def test_one_adamw_step_by_hand():
    """A constant gradient makes Adam's bias-corrected moments exactly g and g^2: the step is
    -lr * (g / (|g| + eps) + weight_decay * param), with no decay term where the mask exempts."""
    config = TrainConfig(learning_rate=PEAK, steps=10, warmup_fraction=0.2, weight_decay=0.3,
                         max_grad_norm=1e9)  # fmt: skip
    tx, schedule = optimizer_for(config)
    params = _toy_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    state = tx.init(params)
    for _ in range(3):  # steps 0, 1, 2: the learning rate of step 2 is 2/2 * PEAK
        updates, state = tx.update(grads, state, params)
    lr = float(schedule(2))
    assert lr == pytest.approx(PEAK)
    adam = 0.5 / (0.5 + 1e-8)
    np.testing.assert_allclose(
        updates["layer"]["w"], -lr * (adam + 0.3 * params["layer"]["w"]), rtol=1e-5
    )
    np.testing.assert_allclose(updates["head"], -lr * (adam + 0.3 * params["head"]), rtol=1e-5)
    np.testing.assert_allclose(updates["layer"]["dt_bias"], np.full(3, -lr * adam), rtol=1e-5)
    np.testing.assert_allclose(updates["final_norm"], np.full(3, -lr * adam), rtol=1e-5)


def test_decay_mask_exempts_by_name_on_plain_parameter_trees():
    """The HF Trainer's rule, as the reference's run applied it: names with "bias" are exempt;
    A_log, D and the AHN's norms decay (their `_no_weight_decay` marks are not read)."""
    leaf = jnp.zeros(2)
    names = ("A_log", "D", "dt_bias", "q_bias", "o_norm", "q_kernel", "dt_proj", "Dx")
    params = {name: leaf for name in names}
    params["layers"] = {"g_proj": leaf, "dt_bias": leaf, "input_norm": {"scale": leaf}}
    mask = decay_mask(params)
    assert not any(mask[name] for name in ("dt_bias", "q_bias"))
    assert all(mask[name] for name in ("A_log", "D", "o_norm", "q_kernel", "dt_proj", "Dx"))
    assert mask["layers"]["g_proj"]
    assert not mask["layers"]["dt_bias"]  # by the leaf's own name, at any depth
    assert not mask["layers"]["input_norm"]["scale"]  # a base norm's weight


# What does not decay, written out per model (the real parameter names, ahn_jax/model/memory.py
# and ahn_jax/model/layers.py): everything else trainable decays.
# The reference's run (HF Trainer 4.51 on its modules' names): only the biases are exempt.
EXEMPT = {
    "gdn": {"layers/ahn/dt_bias"},
    "dn": set(),
    "mamba2": {"layers/ahn/dt_bias", "layers/ahn/dt_proj_bias", "layers/ahn/g_proj_bias"},
    # objective = "pretrain": every base weight trains
    None: {
        "final_norm/scale",
        "layers/input_norm/scale",
        "layers/post_attn_norm/scale",
        "layers/attn/q_bias",
        "layers/attn/k_bias",
        "layers/attn/v_bias",
    },
}


def _named_leaves(state) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(v) for path, v in flat_state(state).items()}


@pytest.mark.parametrize("ahn_type", [*AHN_TYPES, None])
def test_a_zero_gradient_step_decays_exactly_the_weights_that_should(ahn_type):
    """On each model's real trainable state (the AHN weights; the whole base for pretraining): with
    zero gradients Adam's step is 0, so a step at learning rate lr leaves the exempt weights
    bit-identical and multiplies every other one by 1 - lr * weight_decay."""
    model = abstract_model(tiny_config(ahn_type=ahn_type))  # the names and shapes
    trainable = nnx.state(model, AhnParam if ahn_type else nnx.Param)
    rng = np.random.default_rng(0)
    # random values: the AHN output projection starts at zero, where decay would not show
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), trainable)
    lr, wd = 0.1, 0.5
    # one warmup step: step 0's learning rate is 0, step 1's the peak
    config = TrainConfig(learning_rate=lr, steps=10, warmup_fraction=0.1, weight_decay=wd)
    tx, schedule = optimizer_for(config)
    assert float(schedule(1)) == pytest.approx(lr, rel=1e-7)

    @jax.jit  # as the train step runs it (and one compile instead of one per operation)
    def two_steps(params):
        zeros, state = jax.tree.map(jnp.zeros_like, params), tx.init(params)
        for _ in range(2):
            updates, state = tx.update(zeros, state, params)
            params = optax.apply_updates(params, updates)
        return params

    before = _named_leaves(params)
    params = two_steps(params)
    after = _named_leaves(params)
    assert EXEMPT[ahn_type] < set(before), sorted(before)
    for name, value in before.items():
        if name in EXEMPT[ahn_type]:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(after[name], value * (1 - lr * wd), rtol=1e-6, err_msg=name)
