"""The tiled losses against dense references, their empty-mask guard and their memory bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ahn_jax.training import losses

B, T, D, V = 2, 37, 16, 300


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    student, teacher = (jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32) for _ in range(2))
    head = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    valid = jnp.asarray(rng.random((B, T)) < 0.7)
    return student, teacher, head, valid


def dense_kl(student, teacher, head, valid):
    log_p_t = jax.nn.log_softmax(teacher @ head, -1)
    log_p_s = jax.nn.log_softmax(student @ head, -1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1)
    return jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.sum(valid)


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
    np.testing.assert_allclose(float(ours), float(jnp.sum(nll * valid) / valid.sum()), rtol=1e-5)


def test_layer_distill_compares_directions_only():
    rng = np.random.default_rng(4)
    attn = jnp.asarray(rng.normal(size=(3, B, T, 2, 4)), jnp.float32)
    valid = jnp.ones((B, T), bool)
    assert float(losses.layer_distill(attn, 5.0 * attn, valid)[0]) < 1e-10
    assert float(losses.layer_distill(attn, -attn, valid)[0]) == pytest.approx(4.0, rel=1e-5)


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
