"""The jitted training step, apart from the run around it (data, checkpoints, logging).

Teacher: the frozen model in mode "full" (no gradient). Student: the same weights in mode "ahn" with
the step's window and sinks. Loss on positions >= S + W whose label is not ignored: KL(teacher ||
student) ("kl"), next-token cross-entropy of the student ("ce"), or per-layer attention-output
distillation ("distill"). Gradients flow only to the `AhnParam` weights (the `trainable` state).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ahn_jax.config import TrainConfig
from ahn_jax.training import losses


def valid_positions(labels_BT, window, sinks):
    """Where the loss counts: the memory is active (t >= S + W) and the label is not ignored."""
    t = jnp.arange(labels_BT.shape[1])[None, :]
    return (t >= window + sinks) & (labels_BT != losses.IGNORE)


def next_token_targets(labels_BT):
    """Position t predicts label t + 1; the last position predicts nothing."""
    return jnp.pad(labels_BT[:, 1:], ((0, 0), (0, 1)), constant_values=losses.IGNORE)


def loss_on_batch(model, batch, window, sinks, loss_name, seq_tile, vocab_tile, student_mode="ahn"):
    """(mean loss, counted positions). Pretraining is "ce" with the student in mode "full" and
    window = sinks = 0 (every labelled position counts)."""
    ids, labels = batch["input_ids"], batch["labels"]
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    distill = loss_name == "distill"
    student, student_attn = model.hidden_states(
        ids, positions, mode=student_mode, window=window, sinks=sinks, collect=distill
    )
    valid = valid_positions(labels, window, sinks)
    if loss_name == "ce":  # next-token CE: position t predicts label t + 1
        targets = next_token_targets(labels)
        valid = valid & (targets != losses.IGNORE)
        return losses.cross_entropy(
            student, model.lm_head_DV(), targets, valid, seq_tile=seq_tile, vocab_tile=vocab_tile
        )
    teacher, teacher_attn = model.hidden_states(ids, positions, mode="full", collect=distill)
    if distill:
        return losses.layer_distill(student_attn, teacher_attn, valid)
    return losses.distillation_kl(
        student, teacher, model.lm_head_DV(), valid, seq_tile=seq_tile, vocab_tile=vocab_tile
    )


def make_train_step(graphdef, tx, schedule, train_config: TrainConfig):
    """A jitted step: (trainable, opt_state, frozen, batch, window, sinks) -> (trainable,
    opt_state, metrics). Micro-batches are scanned with gradients summed in fp32. With
    `objective="pretrain"` the trainable state is the base and the loss next-token CE under full
    attention (window and sinks are ignored)."""
    loss_name = train_config.loss
    pretrain = train_config.objective == "pretrain"
    micro = train_config.micro_batches
    tiles = (train_config.seq_tile, train_config.vocab_tile)

    def micro_loss(trainable, frozen, batch, window, sinks):
        model = nnx.merge(graphdef, trainable, frozen)
        if pretrain:  # window and sinks are not used: every labelled position counts
            loss, count = loss_on_batch(model, batch, 0, 0, "ce", *tiles, student_mode="full")
        else:
            loss, count = loss_on_batch(model, batch, window, sinks, loss_name, *tiles)
        return loss * count, count

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(trainable, opt_state, frozen, batch, window, sinks, step_index):
        split = jax.tree.map(lambda x: x.reshape(micro, -1, *x.shape[1:]), batch)
        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

        def accumulate(carry, micro_batch):
            total, count, grads = carry
            (weighted, n), g = grad_fn(trainable, frozen, micro_batch, window, sinks)
            return (total + weighted, count + n, jax.tree.map(jnp.add, grads, g)), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), zeros)
        (total, count, grads), _ = jax.lax.scan(accumulate, init, split)
        scale = 1.0 / jnp.maximum(count, 1)
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {
            "loss": total * scale,
            "valid_tokens": count,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(step_index),
        }
        return trainable, opt_state, metrics

    return step
