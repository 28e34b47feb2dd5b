"""The tiled losses against dense references, their empty-mask guard and their memory bound."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ahn_jax.model.sharding import make_mesh, partition_spec
from ahn_jax.training import losses

B, T, D, V = 2, 37, 16, 300


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    student, teacher = (jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32) for _ in range(2))
    head = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    valid = jnp.asarray(rng.random((B, T)) < 0.7)
    return student, teacher, head, valid


def per_sequence_mean(values_BT, valid):
    """The reference's reduction, densely: each row's mean over its valid positions, then the
    mean over the rows that have one."""
    counts = jnp.sum(valid, 1)
    means = jnp.sum(jnp.where(valid, values_BT, 0.0), 1) / jnp.maximum(counts, 1)
    return jnp.sum(jnp.where(counts > 0, means, 0.0)) / jnp.sum(counts > 0)


def dense_kl(student, teacher, head, valid):
    log_p_t = jax.nn.log_softmax(teacher @ head, -1)
    log_p_s = jax.nn.log_softmax(student @ head, -1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1)
    return per_sequence_mean(kl, valid)


@pytest.mark.parametrize("seq_tile, vocab_tile", [(8, 64), (16, 300), (512, 8192)])
def test_tiled_kl_equals_dense(seq_tile, vocab_tile):
    student, teacher, head, valid = _inputs()

    def tiled(student):
        return losses.distillation_kl(
            student, teacher, head, valid, seq_tile=seq_tile, vocab_tile=vocab_tile
        )[0]

    ours, reference = tiled(student), dense_kl(student, teacher, head, valid)
    assert float(ours) > 0
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(jax.grad(tiled)(student)),
        np.asarray(jax.grad(lambda s: dense_kl(s, teacher, head, valid))(student)),
        atol=1e-6,
    )


def test_kl_is_zero_for_identical_streams_and_the_teacher_gets_no_gradient():
    student, _, head, valid = _inputs()
    loss, count = losses.distillation_kl(student, student, head, valid, seq_tile=8, vocab_tile=64)
    assert abs(float(loss)) < 1e-5 and int(count) == int(valid.sum())
    grad_teacher = jax.grad(
        lambda t: losses.distillation_kl(student, t, head, valid, seq_tile=8, vocab_tile=64)[0]
    )(student)
    assert not np.any(np.asarray(grad_teacher))


def test_empty_mask_gives_zero_not_nan():
    student, teacher, head, valid = _inputs()
    none = jnp.zeros_like(valid)
    for fn in (
        lambda s: losses.distillation_kl(s, teacher, head, none, seq_tile=8, vocab_tile=64)[0],
        lambda s: losses.cross_entropy(s, head, jnp.zeros((B, T), int), none, seq_tile=8)[0],
    ):
        assert float(fn(student)) == 0.0
        assert np.all(np.asarray(jax.grad(fn)(student)) == 0)
    attn = jnp.ones((3, B, T, 2, 4))
    assert float(losses.layer_distill(attn, attn * 2, none)[0]) == 0.0


def test_tiled_cross_entropy_equals_dense():
    student, _, head, valid = _inputs()
    targets = jnp.asarray(np.random.default_rng(3).integers(0, V, (B, T)))
    ours = losses.cross_entropy(student, head, targets, valid, seq_tile=8, vocab_tile=64)[0]
    log_p = jax.nn.log_softmax(student @ head, -1)
    nll = -jnp.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(ours), float(per_sequence_mean(nll, valid)), rtol=1e-5)


def test_a_mask_shared_by_the_rows_broadcasts_to_every_row():
    student, teacher, head, _ = _inputs()
    shared = jnp.arange(T)[None, :] >= 5  # [1, T]
    every = jnp.broadcast_to(shared, (B, T))
    targets = jnp.asarray(np.random.default_rng(3).integers(0, V, (B, T)))
    for loss in (
        lambda valid: losses.cross_entropy(student, head, targets, valid, seq_tile=8),
        lambda valid: losses.distillation_kl(student, teacher, head, valid, seq_tile=8),
    ):
        (got, got_count), (want, want_count) = loss(shared), loss(every)
        assert int(got_count) == int(want_count) == B * (T - 5)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_layer_distill_compares_directions_averaged_over_the_hidden_values():
    rng = np.random.default_rng(4)
    attn = jnp.asarray(rng.normal(size=(3, B, T, 2, 4)), jnp.float32)
    valid = jnp.ones((B, T), bool)
    assert float(losses.layer_distill(attn, 5.0 * attn, valid)[0]) < 1e-10
    # unit vectors u and -u differ by |2u|^2 = 4 in all, 4 / (N * H) = 0.5 per hidden value, as
    # the reference's mse_loss(...).mean(-1) averages
    assert float(losses.layer_distill(attn, -attn, valid)[0]) == pytest.approx(0.5, rel=1e-5)


def test_tiled_kl_memory_is_bounded_by_the_tile():
    """At T = 4096, V = 32768 the [T, V] fp32 logits alone would take 512 MiB per stream; the
    compiled gradient of the tiled loss needs a small multiple of one [512, 2048] tile."""
    T_long, V_long, D_long = 4096, 32768, 64
    student = jax.ShapeDtypeStruct((1, T_long, D_long), jnp.float32)
    head = jax.ShapeDtypeStruct((D_long, V_long), jnp.float32)
    valid = jax.ShapeDtypeStruct((1, T_long), jnp.bool_)

    def loss(student, teacher, head, valid):
        return losses.distillation_kl(student, teacher, head, valid, seq_tile=512, vocab_tile=2048)[
            0
        ]

    compiled = jax.jit(jax.grad(loss)).lower(student, student, head, valid).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    logits_bytes = T_long * V_long * 4
    assert temp < logits_bytes / 16, (temp, logits_bytes)


def test_row_sums_are_per_sequence_across_tiles_and_empty_rows_give_zero():
    """Tiles of 8 positions over 3 sequences (2 of each) leave T = 37 a padded last tile; a row
    with no valid position sums to 0, its mean is 0 and the batch mean leaves it out."""
    rng = np.random.default_rng(5)
    student, teacher = (jnp.asarray(rng.normal(size=(3, T, D)), jnp.float32) for _ in range(2))
    head = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    valid = jnp.asarray(rng.random((3, T)) < 0.6).at[1].set(False)
    targets = jnp.asarray(rng.integers(0, V, (3, T)))
    log_p_t = jax.nn.log_softmax(teacher @ head, -1)
    log_p_s = jax.nn.log_softmax(student @ head, -1)
    dense = {
        "kl": jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1),
        "ce": -jnp.take_along_axis(log_p_s, targets[..., None], -1)[..., 0],
    }
    sums = {
        "kl": losses.kl_sums(student, teacher, head, valid, seq_tile=8, vocab_tile=64),
        "ce": losses.ce_sums(student, head, targets, valid, seq_tile=8, vocab_tile=64),
    }
    counts = jnp.sum(valid, 1)
    for name, got in sums.items():
        want = jnp.sum(jnp.where(valid, dense[name], 0.0), 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
        assert float(got[1]) == 0.0
        means = losses.sequence_means(got, counts)
        assert float(means[1]) == 0.0
        np.testing.assert_allclose(
            losses.mean_over_sequences(means, counts), (means[0] + means[2]) / 2, rtol=1e-6
        )
    assert float(losses.mean_over_sequences(jnp.zeros(3), jnp.zeros(3, int))) == 0.0


# sequence_losses on a tiny model against float64 numpy from the model's logits

LENGTHS, WINDOWS, SINKS = (40, 23, 40, 23), (5, 3, 12, 30), (3, 0, 4, 2)


@pytest.fixture(scope="module")
def tiny_batch():
    from shared import random_ids, tiny_config

    from ahn_jax.model.transformer import init_model

    model = init_model(tiny_config(ahn_type="gdn"), seed=0, ahn_output_init="normal")
    ids = random_ids(64, (4, 40), seed=6)
    labels = ids.copy()
    for b, length in enumerate(LENGTHS):  # right padding carries no label
        ids[b, length:], labels[b, length:] = 0, losses.IGNORE
    labels[0, :12] = losses.IGNORE  # a prompt
    labels[2, :30] = labels[2, 34:] = losses.IGNORE  # a short reply: 3 CE positions after S + W
    window, sinks = jnp.asarray(WINDOWS, jnp.int32), jnp.asarray(SINKS, jnp.int32)
    return model, jnp.asarray(ids), jnp.asarray(labels), window, sinks


def _log_softmax64(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _row_means64(values_BT, valid_BT):
    counts = valid_BT.sum(1)
    return np.where(counts > 0, (values_BT * valid_BT).sum(1) / np.maximum(counts, 1), 0.0)


def test_sequence_losses_equal_float64_per_sequence_kl_and_ce(tiny_batch):
    model, ids, labels, window, sinks = tiny_batch
    log_s = _log_softmax64(model(ids, mode="ahn", window=window, sinks=sinks))
    log_t = _log_softmax64(model(ids))
    labels64 = np.asarray(labels)
    t = np.arange(ids.shape[1])[None, :]
    valid = (t >= (np.asarray(window) + np.asarray(sinks))[:, None]) & (labels64 != losses.IGNORE)
    targets = np.pad(labels64[:, 1:], ((0, 0), (0, 1)), constant_values=losses.IGNORE)
    nll = -np.take_along_axis(log_s, np.maximum(targets, 0)[..., None], -1)[..., 0]
    want = {
        "kl": _row_means64((np.exp(log_t) * (log_t - log_s)).sum(-1), valid),
        "ce": _row_means64(nll, valid & (targets != losses.IGNORE)),
    }
    assert (valid & (targets != losses.IGNORE)).sum(1)[2] == 3 and not valid[3].any()
    got = {}
    for loss in ("kl", "ce", "kl+ce"):
        got[loss] = losses.sequence_losses(
            model, ids, labels, window=window, sinks=sinks, loss=loss, seq_tile=16, vocab_tile=24
        )
        assert got[loss].dtype == jnp.float32 and np.all(np.isfinite(got[loss]))
        assert float(got[loss][3]) == 0.0  # no valid position
    for loss in ("kl", "ce"):
        assert np.all(want[loss][:3] > 0)
        np.testing.assert_allclose(got[loss], want[loss], rtol=2e-4, atol=1e-7, err_msg=loss)
    np.testing.assert_allclose(got["kl+ce"], got["kl"] + got["ce"], rtol=1e-6)


def test_sequence_distill_averages_layers_and_hidden_values(tiny_batch):
    model, ids, labels, window, sinks = tiny_batch
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    _, student = model.hidden_states(ids, positions, mode="ahn", window=window, sinks=sinks,
                                     collect=True)  # fmt: skip
    _, teacher = model.hidden_states(ids, positions, collect=True)

    def unit(x):  # [L, B, T, N * H]
        x = np.asarray(x, np.float64).reshape(*x.shape[:3], -1)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    error = ((unit(student) - unit(teacher)) ** 2).mean(-1).mean(0)  # [B, T]
    # the reference's positions: from S + W to the row's end (its last labelled token), prompt
    # tokens included: rows 0 and 2 count the prompt positions 8..11 and 16..29 the KL skips
    t = np.arange(ids.shape[1])[None, :]
    ends = np.array([[40], [23], [34], [23]])
    valid = (t >= (np.asarray(window) + np.asarray(sinks))[:, None]) & (t < ends)
    assert valid[0, 8:12].all() and valid[2, 16:34].all() and not valid[2, 34:].any()
    got = losses.sequence_losses(model, ids, labels, window=window, sinks=sinks, loss="distill")
    np.testing.assert_allclose(got, _row_means64(error, valid), rtol=1e-4, atol=1e-9)
    assert float(got[3]) == 0.0 and np.all(np.asarray(got[:3]) > 0)


@pytest.mark.parametrize("loss", ["kl", "ce+kl", "kl+ce+distill", "distill+ce"])
def test_loss_combinations_are_accepted(loss):
    from ahn_jax.config import TrainConfig

    assert TrainConfig(loss=loss).loss == loss
    assert losses.loss_terms(loss) == tuple(loss.split("+"))


@pytest.mark.parametrize("loss", ["mse", "kl+mse", "kl+kl", "kl+", ""])
def test_other_loss_names_are_refused_naming_the_field(loss):
    from ahn_jax.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=r"train\.loss must be one of .*kl\+ce"):
        TrainConfig(loss=loss)
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.loss_terms(loss)


def _gathered_shapes(hlo_text):
    return [tuple(int(n) for n in dims.split(",") if n)
            for dims in re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", hlo_text)]  # fmt: skip


def dense_ce(student, targets, head, valid):
    log_p = jax.nn.log_softmax(student @ head, -1)
    return per_sequence_mean(-jnp.take_along_axis(log_p, targets[..., None], -1)[..., 0], valid)


@pytest.mark.parametrize("axes", [{"data": 2, "fsdp": 2, "tensor": 2}, {"data": 2, "fsdp": 4}])
@pytest.mark.parametrize("objective", ["kl", "ce"])
def test_on_a_mesh_each_device_takes_its_own_rows_and_columns(axes, objective):
    """KL and CE + grad on meshes equal the dense losses (with a tensor axis: vocabulary shards of
    150 columns in tiles of 64, each shard's last tile shifted back), and the compiled program
    gathers neither the batch's hidden states (the position tiles scanned the split batch: XLA
    gathered every row onto every device) nor a split vocabulary (only the head's embed split;
    CE's target logits came from a gather of the head's columns, the whole vocabulary)."""
    mesh = make_mesh(axes)
    rng = np.random.default_rng(3)
    student, teacher = (rng.normal(size=(8, 64, D)).astype(np.float32) for _ in range(2))
    head = rng.normal(size=(D, V)).astype(np.float32)
    valid = rng.random((8, 64)) < 0.7
    targets = rng.integers(0, V, (8, 64)).astype(np.int32)

    def loss(student, teacher, head):
        tiles = {"seq_tile": 32, "vocab_tile": 64}
        if objective == "ce":
            return losses.cross_entropy(student, head, targets, valid, **tiles)[0]
        return losses.distillation_kl(student, teacher, head, valid, **tiles)[0]

    def dense(student, teacher, head):
        if objective == "ce":
            return dense_ce(student, targets, head, valid)
        return dense_kl(student, teacher, head, valid)

    rows = NamedSharding(mesh, partition_spec(("batch", "length", "embed"), student.shape, mesh))
    columns = NamedSharding(mesh, partition_spec(("embed", "vocab"), head.shape, mesh))
    vocab = "tensor" if "tensor" in axes else None
    assert rows.spec == P(("data", "fsdp")) and columns.spec == (
        P("fsdp", vocab) if vocab else P("fsdp")
    )
    args = (jax.device_put(student, rows), jax.device_put(teacher, rows),
            jax.device_put(head, columns))  # fmt: skip
    with jax.set_mesh(mesh):
        step = jax.jit(jax.value_and_grad(loss))
        value, grad = step(*args)
        hlo = step.lower(*args).compile().as_text()
    want, want_grad = jax.value_and_grad(dense)(student, teacher, head)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    gathered = _gathered_shapes(hlo)
    assert gathered, "no all-gather at all: the head's embed split should be gathered"
    for shape in gathered:
        assert shape[0] != 8 and math.prod(shape) < 8 * 64 * D, shape  # no sequence's rows
        assert vocab is None or V not in shape, shape  # never a split vocabulary whole
