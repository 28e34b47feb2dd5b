"""Losses: self-distillation KL beyond the window, next-token CE, per-layer distill, each reduced
per sequence as the reference does (docs/method.md §Training).

A sequence's loss is the mean over its valid positions (t >= S_b + W_b and a label that is not
ignored; "ce" also needs the next label); the batch's loss is the mean of those over the sequences
that have a valid position, so each sequence weighs the same whatever its number of valid tokens.
A sequence without a valid position has loss 0 (not NaN) and is left out of the mean. `loss` names
one of LOSSES or a "+"-joined combination ("kl+ce"): each sequence's terms are added.

The KL and CE never form the [T, V] logits (V = 151,936 for Qwen2.5): the positions go a tile
at a time and, within a tile, the vocabulary `vocab_tile` columns at a time with running
log-sum-exp statistics (an online softmax); each tile adds its values into its sequences' sums
(training/loss_tiles.py, laid out for a mesh). The backward pass recomputes a tile's logits
instead of storing them: peak memory is a few [seq_tile, vocab_tile] fp32 blocks per device
whatever B, T and V.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ahn_jax.config.run import LOSSES
from ahn_jax.training.loss_tiles import online_stats, row_sums

IGNORE = -100  # label of positions that carry no loss (HF convention)


def loss_terms(loss: str) -> tuple[str, ...]:
    """The terms of a loss name: "kl+ce" -> ("kl", "ce"), each one of LOSSES, none twice."""
    terms = tuple(loss.split("+"))
    if any(term not in LOSSES for term in terms) or len(set(terms)) != len(terms):
        raise ValueError(
            f"loss must be one of {LOSSES} or a '+'-joined combination of them, got {loss!r}"
        )
    return terms


def valid_positions(labels_BT, window, sinks):
    """Where the loss counts: the row's memory is active (t >= S_b + W_b) and the label, read at
    the token's own position, is not ignored. `window`, `sinks`: scalars or [B]."""
    return _memory_active(labels_BT.shape[1], window, sinks) & (labels_BT != IGNORE)


def _memory_active(length: int, window, sinks):
    """[B or 1, T]: t >= S_b + W_b."""
    start = jnp.reshape(jnp.asarray(window) + jnp.asarray(sinks), (-1, 1))
    return jnp.arange(length)[None, :] >= start


def distill_positions(labels_BT, window, sinks):
    """Where the `distill` term counts: as in the reference, every position from S_b + W_b to
    the end of the sequence, the prompt's included (it compares hidden states, not predictions;
    the reference takes `[:, S + W:]` of its row). A row ends at its last labelled token
    (training rows end with the reply; pretraining labels every token): the padding after it
    does not count (the reference's mean includes its collator's padding to a multiple of 8,
    docs/method.md §Training)."""
    t = jnp.arange(labels_BT.shape[1])[None, :]
    last = jnp.max(jnp.where(labels_BT != IGNORE, t, -1), axis=1, keepdims=True)
    return _memory_active(labels_BT.shape[1], window, sinks) & (t <= last)


def next_token_targets(labels_BT):
    """Position t predicts label t + 1; the last position predicts nothing."""
    return jnp.pad(labels_BT[:, 1:], ((0, 0), (0, 1)), constant_values=IGNORE)


def sequence_means(sums_B, counts_B):
    """Each sequence's mean [B]: 0 where it has no valid position."""
    return jnp.where(counts_B > 0, sums_B / jnp.maximum(counts_B, 1), 0.0)


def mean_over_sequences(losses_B, counts_B):
    """The batch loss: the mean of the sequences' losses over those with a valid position (0 if
    none has one)."""
    nonempty = counts_B > 0
    total = jnp.sum(jnp.where(nonempty, losses_B, 0.0))
    return jnp.where(jnp.any(nonempty), total / jnp.maximum(jnp.sum(nonempty), 1), 0.0)


def kl_sums(student_BTD, teacher_BTD, head_DV, valid_BT, *, seq_tile=512, vocab_tile=8192):
    """Per-sequence sums [B] of KL(p_teacher || p_student) at temperature 1 over valid positions.

    Inputs are final-normed hidden states; logits are hidden @ head_DV. No gradient reaches the
    teacher."""
    valid_BT = jnp.broadcast_to(valid_BT, student_BTD.shape[:2])
    teacher = jax.lax.stop_gradient(teacher_BTD)

    def per_row(student_rows, teacher_rows):
        m_s, s_s, m_t, s_t, cross = online_stats(
            (student_rows, teacher_rows), head_DV, vocab_tile, with_teacher=True
        )
        # KL = sum p_t (z_t - z_s) - lse_t + lse_s
        return cross / s_t - (m_t + jnp.log(s_t)) + (m_s + jnp.log(s_s))

    return row_sums(per_row, (student_BTD, teacher), valid_BT, seq_tile)


def ce_sums(student_BTD, head_DV, targets_BT, valid_BT, *, seq_tile=512, vocab_tile=8192):
    """Per-sequence sums [B] of the CE of `targets` (already aligned with the positions)."""
    valid_BT = jnp.broadcast_to(valid_BT, student_BTD.shape[:2])

    def per_row(student_rows, target_rows):
        m_s, s_s, target_logit = online_stats(
            (student_rows,), head_DV, vocab_tile, with_teacher=False, targets=target_rows[:, 0]
        )
        return m_s + jnp.log(s_s) - target_logit

    return row_sums(per_row, (student_BTD, targets_BT[..., None]), valid_BT, seq_tile)


def distill_sums(student_LBTNH, teacher_LBTNH, valid_BT):
    """Per-sequence sums [B] over valid positions of the reference's `distill` term (with
    `use_normalized_l2`): the squared difference of the L2-normalised pre-o_proj attention
    outputs, averaged over the N * H hidden values and over the layers."""

    def normalize(x):
        x = x.astype(jnp.float32).reshape(*x.shape[:3], -1)
        return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)

    error = jnp.mean(
        (normalize(student_LBTNH) - normalize(jax.lax.stop_gradient(teacher_LBTNH))) ** 2, (0, -1)
    )  # [B, T]
    return jnp.sum(jnp.where(valid_BT, error, 0.0), axis=1)


def _batch_loss(sums_B, valid_BT):
    """(the mean over sequences of each one's mean, the count of valid positions)."""
    counts = jnp.sum(valid_BT, axis=1)
    return mean_over_sequences(sequence_means(sums_B, counts), counts), jnp.sum(counts)


def distillation_kl(student_BTD, teacher_BTD, head_DV, valid_BT, *, seq_tile=512, vocab_tile=8192):
    """The batch's KL (mean over sequences of their mean over valid positions); (loss, count).
    `valid_BT` may be anything that broadcasts to [B, T] (e.g. [1, T])."""
    valid_BT = jnp.broadcast_to(valid_BT, student_BTD.shape[:2])
    sums = kl_sums(
        student_BTD, teacher_BTD, head_DV, valid_BT, seq_tile=seq_tile, vocab_tile=vocab_tile
    )
    return _batch_loss(sums, valid_BT)


def cross_entropy(student_BTD, head_DV, targets_BT, valid_BT, *, seq_tile=512, vocab_tile=8192):
    """The batch's CE of `targets` (mean over sequences of their means); (loss, count)."""
    valid_BT = jnp.broadcast_to(valid_BT, student_BTD.shape[:2])
    sums = ce_sums(
        student_BTD, head_DV, targets_BT, valid_BT, seq_tile=seq_tile, vocab_tile=vocab_tile
    )
    return _batch_loss(sums, valid_BT)


def layer_distill(student_LBTNH, teacher_LBTNH, valid_BT):
    """The batch's `distill` term (mean over sequences of their means); (loss, count)."""
    return _batch_loss(distill_sums(student_LBTNH, teacher_LBTNH, valid_BT), valid_BT)


def sequence_terms(model, input_ids_BT, labels_BT, *, window, sinks, loss="kl", mode="ahn",
                   seq_tile=512, vocab_tile=8192):  # fmt: skip
    """(each sequence's loss [B] fp32, its count of valid positions [B] int32): the student is
    `model` in `mode` with per-row (or shared) `window` and `sinks`, the teacher the same model
    in mode "full". A combined loss adds each sequence's terms; a row counts positions valid for
    any of them (0 for none: its loss is 0)."""
    terms = loss_terms(loss)
    positions = jnp.broadcast_to(jnp.arange(input_ids_BT.shape[1]), input_ids_BT.shape)
    distill = "distill" in terms
    student, student_attn = model.hidden_states(
        input_ids_BT, positions, mode=mode, window=window, sinks=sinks, collect=distill
    )
    if "kl" in terms or distill:
        teacher, teacher_attn = model.hidden_states(input_ids_BT, positions, collect=distill)
    valid = valid_positions(labels_BT, window, sinks)
    tiles = {"seq_tile": seq_tile, "vocab_tile": vocab_tile}
    per_term = []  # (sums [B], valid [B, T]) of each term
    if "kl" in terms:
        per_term.append((kl_sums(student, teacher, model.lm_head_DV(), valid, **tiles), valid))
    if "ce" in terms:  # next-token CE: position t predicts label t + 1
        targets = next_token_targets(labels_BT)
        ce_valid = valid & (targets != IGNORE)
        sums = ce_sums(student, model.lm_head_DV(), targets, ce_valid, **tiles)
        per_term.append((sums, ce_valid))
    if distill:
        distill_valid = distill_positions(labels_BT, window, sinks)
        per_term.append((distill_sums(student_attn, teacher_attn, distill_valid), distill_valid))
    counts = [jnp.sum(v, axis=1, dtype=jnp.int32) for _, v in per_term]
    losses = [sequence_means(sums, n) for (sums, _), n in zip(per_term, counts, strict=True)]
    return functools.reduce(jnp.add, losses), functools.reduce(jnp.maximum, counts)


def sequence_losses(model, input_ids, labels, *, window, sinks, loss="kl", mode="ahn",
                    seq_tile=512, vocab_tile=8192):  # fmt: skip
    """Each sequence's loss [B] fp32: its mean over its valid positions (t >= sinks_b +
    window_b, label != IGNORE; "ce" also needs the next label), 0 where it has none, NaN-free.
    `window`, `sinks`: int32 [B] (or scalars); `loss`: one of LOSSES or "+"-joined ("kl+ce" =
    the sum of the two). Pretraining's loss is loss="ce", mode="full", window = sinks = 0."""
    losses, _ = sequence_terms(
        model, jnp.asarray(input_ids), jnp.asarray(labels), window=window, sinks=sinks,
        loss=loss, mode=mode, seq_tile=seq_tile, vocab_tile=vocab_tile,
    )  # fmt: skip
    return losses
