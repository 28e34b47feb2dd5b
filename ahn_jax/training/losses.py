"""Losses: self-distillation KL beyond the window, next-token CE, per-layer distill
(docs/method.md §Training).

The KL and CE never form the [T, V] logits (V = 151,936 for Qwen2.5): rows go `seq_tile` at a
time and, within a row tile, the vocabulary `vocab_tile` columns at a time with running log-sum-exp
statistics (an online softmax). Both loops are `lax.scan`s over `jax.checkpoint`ed bodies, so the
backward pass recomputes a tile's logits instead of storing them: peak memory is a few
[seq_tile, vocab_tile] fp32 blocks whatever T and V.

Every loss is a mean over valid positions and is 0, not NaN, when none is valid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# finite: the repeated vocabulary columns of the last tile, and the running max before any column
from kernels.common.masking import MASKED

IGNORE = -100  # label of positions that carry no loss (HF convention)


def _tiles(x_ND, n_rows, tile):
    return jnp.pad(x_ND, ((0, n_rows - x_ND.shape[0]), (0, 0))).reshape(-1, tile, x_ND.shape[-1])


def _online_stats(rows, head_DV, vocab_tile, with_teacher):
    """Per row: student (max, sum exp) and, with a teacher, its (max, sum exp) and
    sum_v exp(z_t - max_t) (z_t - z_s), each accumulated over vocabulary tiles.

    Tiles are read from the head with `dynamic_slice` (no padded or transposed copy of the
    [D, V] head); the last tile is shifted back to end at V and masks the columns it repeats."""
    V = head_DV.shape[1]
    tile = min(vocab_tile, V)
    n_tiles = -(-V // tile)
    n_rows = rows[0].shape[0]

    @jax.checkpoint
    def body(carry, index):
        start = jnp.minimum(index * tile, V - tile)
        head_tile = jax.lax.dynamic_slice_in_dim(head_DV, start, tile, axis=1)
        fresh = start + jnp.arange(tile) >= index * tile

        def logits(h):
            z = jnp.einsum("RD,DV->RV", h, head_tile, preferred_element_type=jnp.float32)
            return jnp.where(fresh, z, MASKED)

        z_s = logits(rows[0])
        m_s, s_s = carry[:2]
        new_m_s = jnp.maximum(m_s, z_s.max(-1))
        s_s = s_s * jnp.exp(m_s - new_m_s) + jnp.exp(z_s - new_m_s[:, None]).sum(-1)
        if not with_teacher:
            return (new_m_s, s_s), None
        z_t = logits(rows[1])
        m_t, s_t, cross = carry[2:]
        new_m_t = jnp.maximum(m_t, z_t.max(-1))
        rescale = jnp.exp(m_t - new_m_t)
        p_t = jnp.exp(z_t - new_m_t[:, None])
        s_t = s_t * rescale + p_t.sum(-1)
        cross = cross * rescale + (p_t * (z_t - z_s)).sum(-1)
        return (new_m_s, s_s, new_m_t, s_t, cross), None

    start = jnp.full((n_rows,), MASKED, jnp.float32)
    zero = jnp.zeros((n_rows,), jnp.float32)
    init = (start, zero, start, zero, zero) if with_teacher else (start, zero)
    stats, _ = jax.lax.scan(body, init, jnp.arange(n_tiles))
    return stats


def _masked_mean(per_row_fn, arrays, valid_N, seq_tile):
    """Mean over valid rows of per_row_fn(row tiles...), one checkpointed row tile at a time."""
    N = valid_N.shape[0]
    n_rows = -(-N // seq_tile) * seq_tile
    tiled = [_tiles(a, n_rows, seq_tile) for a in arrays]
    valid = jnp.pad(valid_N, (0, n_rows - N)).reshape(-1, seq_tile)

    @jax.checkpoint
    def body(total, inputs):
        *rows, valid_rows = inputs
        return total + jnp.sum(jnp.where(valid_rows, per_row_fn(*rows), 0.0)), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (*tiled, valid))
    count = jnp.sum(valid_N)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0), count


def distillation_kl(
    student_BTD,
    teacher_BTD,
    head_DV,
    valid_BT,
    *,
    seq_tile: int = 512,
    vocab_tile: int = 8192,
):
    """Mean KL(p_teacher || p_student) at temperature 1 over valid positions; (loss, count).

    Inputs are final-normed hidden states; logits are hidden @ head_DV. No gradient reaches the
    teacher."""
    D = student_BTD.shape[-1]
    teacher = jax.lax.stop_gradient(teacher_BTD)

    def per_row(student_rows, teacher_rows):
        m_s, s_s, m_t, s_t, cross = _online_stats(
            (student_rows, teacher_rows), head_DV, vocab_tile, with_teacher=True
        )
        # KL = sum p_t (z_t - z_s) - lse_t + lse_s
        return cross / s_t - (m_t + jnp.log(s_t)) + (m_s + jnp.log(s_s))

    return _masked_mean(
        per_row,
        (student_BTD.reshape(-1, D), teacher.reshape(-1, D)),
        valid_BT.reshape(-1),
        seq_tile,
    )


def cross_entropy(
    student_BTD,
    head_DV,
    targets_BT,
    valid_BT,
    *,
    seq_tile: int = 512,
    vocab_tile: int = 8192,
):
    """Mean CE of `targets` (already aligned with the positions) over valid positions."""
    D = student_BTD.shape[-1]
    rows = student_BTD.reshape(-1, D)
    target_logits = jnp.einsum(
        "ND,ND->N",
        rows,
        jnp.take(head_DV, jnp.maximum(targets_BT.reshape(-1), 0), axis=1).T,
        preferred_element_type=jnp.float32,
    )

    def per_row(student_rows, target_rows):
        m_s, s_s = _online_stats((student_rows,), head_DV, vocab_tile, with_teacher=False)
        return m_s + jnp.log(s_s) - target_rows[:, 0]

    return _masked_mean(per_row, (rows, target_logits[:, None]), valid_BT.reshape(-1), seq_tile)


def layer_distill(student_LBTNH, teacher_LBTNH, valid_BT):
    """Per-layer MSE between L2-normalised pre-o_proj attention outputs (the reference's
    `distill` with `use_normalized_l2`), averaged over layers and valid positions."""

    def normalize(x):
        x = x.astype(jnp.float32).reshape(*x.shape[:3], -1)
        return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)

    error = jnp.sum(
        (normalize(student_LBTNH) - normalize(jax.lax.stop_gradient(teacher_LBTNH))) ** 2, -1
    )  # [L, B, T]
    count = jnp.sum(valid_BT)
    total = jnp.sum(jnp.where(valid_BT[None], error, 0.0)) / student_LBTNH.shape[0]
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0), count
