"""The train step's reduction (docs/method.md §Training): its loss is the mean, over the global
batch's sequences that have a valid position, of `losses.sequence_losses`, and its gradient that
mean's gradient, with each row's own window and sinks in the batch; the same with micro-batches and
on a (data, fsdp, tensor) mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from shared import random_ids, tiny_config

from ahn_jax.config import TrainConfig
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.sharding import make_mesh, partition_spec, shard_module
from ahn_jax.model.transformer import init_model
from ahn_jax.training import losses
from ahn_jax.training.step import make_train_step

T = 40
LOSS = "kl+ce"
TILES = {"seq_tile": 16, "vocab_tile": 24}
# row 3's window covers its real tokens: no valid position, so 3 sequences make the mean
LENGTHS, WINDOWS, SINKS = (40, 23, 40, 23), (5, 3, 12, 30), (3, 0, 4, 2)
NONEMPTY = 3


def make_batch():
    ids = random_ids(64, (4, T), seed=7)
    labels = ids.copy()
    for b, length in enumerate(LENGTHS):
        ids[b, length:], labels[b, length:] = 0, losses.IGNORE
    labels[0, :12] = losses.IGNORE
    batch = {"input_ids": ids, "labels": labels, "window": WINDOWS, "sinks": SINKS}
    return {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}


def sgd_step(graphdef, **train):
    """The step with SGD at rate 1 and no clipping: its update is minus its gradient."""
    config = TrainConfig(batch_size=4, seq_len=T, loss=LOSS, **TILES, **train)
    tx = optax.sgd(1.0)
    return tx, make_train_step(graphdef, tx, lambda _: 1.0, config)


def run_step(tx, step, trainable, frozen, batch):
    trainable = jax.tree.map(jnp.copy, trainable)  # the step donates it
    new, _, metrics = step(trainable, tx.init(trainable), frozen, batch, jnp.int32(0))
    return new, metrics


@pytest.fixture(scope="module")
def reference():
    """The model, the batch, and the mean over non-empty rows of sequence_losses with its
    gradient, computed outside the step."""
    model = init_model(tiny_config(ahn_type="gdn"), seed=0, ahn_output_init="normal")
    graphdef, trainable, frozen = nnx.split(model, AhnParam, ...)
    batch = make_batch()

    def mean_loss(trainable):
        merged = nnx.merge(graphdef, trainable, frozen)
        per_row = losses.sequence_losses(
            merged, batch["input_ids"], batch["labels"], window=batch["window"],
            sinks=batch["sinks"], loss=LOSS, **TILES,
        )  # fmt: skip
        return jnp.sum(per_row) / NONEMPTY, per_row

    (loss, per_row), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(trainable)
    assert float(per_row[3]) == 0.0 and np.all(np.asarray(per_row[:3]) > 0)
    return graphdef, trainable, frozen, batch, float(loss), grads


def check_step(reference, new, metrics):
    _, trainable, _, batch, loss, grads = reference
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    assert int(metrics["sequences"]) == NONEMPTY
    valid = losses.valid_positions(batch["labels"], batch["window"], batch["sinks"])
    assert int(metrics["valid_tokens"]) == int(valid.sum())
    for (path, old), (_, updated), (_, grad) in zip(
        nnx.to_flat_state(trainable), nnx.to_flat_state(new), nnx.to_flat_state(grads),
        strict=True,
    ):  # fmt: skip
        step_grad = np.asarray(old[...]) - np.asarray(updated[...])
        np.testing.assert_allclose(step_grad, grad[...], atol=1e-6, rtol=1e-4, err_msg=str(path))


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_step_loss_is_the_mean_of_sequence_losses_over_nonempty_rows(reference, micro_batches):
    graphdef, trainable, frozen, batch, _, _ = reference
    tx, step = sgd_step(graphdef, micro_batches=micro_batches)
    check_step(reference, *run_step(tx, step, trainable, frozen, batch))


def test_step_on_a_2x2x2_mesh_reduces_over_every_row(reference):
    graphdef, trainable, frozen, batch, _, _ = reference
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        model = shard_module(nnx.merge(graphdef, trainable, frozen), mesh)
        _, sharded, sharded_frozen = nnx.split(model, AhnParam, ...)
        placed = {}
        for key, value in batch.items():  # rows, windows and sinks split alike
            axes = ("batch",) + (None,) * (value.ndim - 1)
            spec = partition_spec(axes, value.shape, mesh)
            placed[key] = jax.device_put(value, NamedSharding(mesh, spec))
        assert len(placed["window"].sharding.device_set) == 8
        tx, step = sgd_step(graphdef)
        new, metrics = run_step(tx, step, sharded, sharded_frozen, placed)
    check_step(reference, new, metrics)


def test_the_distillation_step_needs_each_rows_window_and_sinks(reference):
    graphdef, trainable, frozen, batch, _, _ = reference
    tx, step = sgd_step(graphdef)
    rows_only = {k: batch[k] for k in ("input_ids", "labels")}
    with pytest.raises(KeyError, match=r"needs \['window', 'sinks'\]"):
        run_step(tx, step, trainable, frozen, rows_only)


def test_pretraining_reduces_per_sequence_over_every_labelled_position():
    model = init_model(tiny_config(), seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    batch = make_batch()
    batch["labels"] = batch["labels"].at[3].set(losses.IGNORE)  # an empty row
    rows = {k: batch[k] for k in ("input_ids", "labels")}  # no window or sinks needed
    per_row = losses.sequence_losses(model, rows["input_ids"], rows["labels"], window=0, sinks=0,
                                     loss="ce", mode="full", **TILES)  # fmt: skip
    assert float(per_row[3]) == 0.0
    config = TrainConfig(batch_size=4, seq_len=T, objective="pretrain", **TILES)
    tx = optax.sgd(0.0)
    step = make_train_step(graphdef, tx, lambda _: 0.0, config)
    _, _, metrics = step(params, tx.init(params), nnx.State({}), rows, jnp.int32(0))
    np.testing.assert_allclose(float(metrics["loss"]), float(jnp.sum(per_row) / 3), rtol=1e-5)
    assert int(metrics["sequences"]) == 3
