"""The jitted training step, apart from the run around it (data, checkpoints, logging).

Teacher: the frozen model in mode "full" (no gradient). Student: the same weights in mode "ahn",
each row with its own window and sinks. Loss on positions >= S_b + W_b whose label is not ignored:
KL(teacher || student) ("kl"), next-token cross-entropy of the student ("ce"), per-layer
attention-output distillation ("distill"), or a "+"-joined sum of them; each sequence's mean, then
the mean over the sequences that have a valid position (training/losses.py). Gradients flow only to
the `AhnParam` weights (the `trainable` state).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ahn_jax.config import TrainConfig
from ahn_jax.training import losses

# the loss mask and the CE targets live with the losses; named here too, where the step uses them
valid_positions = losses.valid_positions
next_token_targets = losses.next_token_targets

ROWS = ("input_ids", "labels")  # [B, T] int32
WINDOWS = ("window", "sinks")  # [B] int32: each row's W (sinks excluded) and S


def _check_batch(batch, pretrain: bool) -> None:
    missing = [k for k in ROWS + (() if pretrain else WINDOWS) if k not in batch]
    if missing:
        raise KeyError(
            f"the step's batch needs {missing} (input_ids, labels [B, T]; window, sinks [B] "
            f"int32), got keys {sorted(batch)}"
        )


def _micro_loss(graphdef, train_config: TrainConfig):
    """(trainable, frozen, micro-batch) -> (sum of the rows' losses, (non-empty rows, valid
    positions)); rows without a valid position have loss 0, so the sum runs over the others."""
    pretrain = train_config.objective == "pretrain"
    loss_name = "ce" if pretrain else train_config.loss
    losses.loss_terms(loss_name)  # a bad name fails here, not inside the trace
    tiles = {"seq_tile": train_config.seq_tile, "vocab_tile": train_config.vocab_tile}

    def micro_loss(trainable, frozen, batch):
        model = nnx.merge(graphdef, trainable, frozen)
        if pretrain:  # every labelled position counts
            bounds = {"window": 0, "sinks": 0, "mode": "full"}
        else:
            bounds = {"window": batch["window"], "sinks": batch["sinks"], "mode": "ahn"}
        per_row, counts = losses.sequence_terms(
            model, batch["input_ids"], batch["labels"], loss=loss_name, **bounds, **tiles
        )
        return jnp.sum(per_row), (jnp.sum(counts > 0), jnp.sum(counts))

    return micro_loss


def make_train_step(graphdef, tx, schedule, train_config: TrainConfig):
    """A jitted step: (trainable, opt_state, frozen, batch, step_index) -> (trainable, opt_state,
    metrics).

    `batch` holds "input_ids" and "labels" [B, T] int32 and "window" and "sinks" [B] int32 (each
    row's own pair, traced: new values do not recompile), placed alike, so the micro-batch split
    and data-parallel sharding cut them together. The loss is the mean over the global batch's
    sequences with a valid position of each one's mean loss: micro-batches (scanned, gradients
    summed in fp32) add up the per-sequence losses and count the non-empty sequences, and the sum
    is divided once at the end. Metrics: loss, sequences (non-empty rows), valid_tokens,
    grad_norm, learning_rate. With `objective="pretrain"` the trainable state is the base and the
    loss next-token CE under full attention on every labelled position, also per sequence (window
    and sinks are not needed)."""
    pretrain = train_config.objective == "pretrain"
    micro = train_config.micro_batches
    grad_fn = jax.value_and_grad(_micro_loss(graphdef, train_config), has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(trainable, opt_state, frozen, batch, step_index):
        _check_batch(batch, pretrain)
        keys = ROWS + (() if pretrain else WINDOWS)
        split = {k: batch[k].reshape(micro, -1, *batch[k].shape[1:]) for k in keys}

        def accumulate(carry, micro_batch):
            total, sequences, tokens, grads = carry
            (summed, (rows, count)), g = grad_fn(trainable, frozen, micro_batch)
            grads = jax.tree.map(jnp.add, grads, g)
            return (total + summed, sequences + rows, tokens + count, grads), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                zeros)  # fmt: skip
        (total, sequences, tokens, grads), _ = jax.lax.scan(accumulate, init, split)
        scale = 1.0 / jnp.maximum(sequences, 1)
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {
            "loss": total * scale,
            "sequences": sequences,
            "valid_tokens": tokens,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(step_index),
        }
        return trainable, opt_state, metrics

    return step
