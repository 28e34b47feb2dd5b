"""Logits processing and the choice of the next token, as transformers' `generate` does it
(transformers/generation/utils.py `_get_logits_processor`, logits_process.py), in its order:

  1. repetition penalty over the prompt and the generated ids (RepetitionPenaltyLogitsProcessor:
     a seen token's score s becomes s * p if s < 0 else s / p, once per distinct token), applied
     when p != 1, greedy or not;
  2. only when sampling (`do_sample`): temperature (when != 1), top-k (when != 0), top-p (when
     < 1), each with min_tokens_to_keep = 1, filtered scores set to -inf;
  3. a draw from softmax(scores) when sampling, else the argmax of the scores.

When `do_sample` is false, temperature, top-k and top-p are ignored, as in transformers. The
penalty needs each row's set of seen tokens: a [B, V] bool presence mask (`presence_mask` from the
prompt, `mark_seen` per step), kept on the device and updated inside the jitted decode step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a token is chosen; hashable, so that the jitted step takes it as a static argument
    (only the processors in use are traced). The defaults are transformers' global ones."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        # transformers checks a processor's setting only when the processor is used
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not self.do_sample:
            return
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 when sampling (do_sample), got {self.temperature}; "
                "for greedy decoding set do_sample false"
            )
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")

    @property
    def uses_penalty(self) -> bool:
        return self.repetition_penalty != 1.0


GREEDY = Sampling()


def as_transformers_sees(logits_BV, compute_dtype) -> jax.Array:
    """The logits as transformers' `generate` processes them: its lm_head returns them in the
    model's compute dtype and `generate` copies them to fp32 (utils.py `_sample`), so a bf16
    model's logits are rounded to bf16 first (ours accumulate the head in fp32). Near-equal top
    logits then tie, and the argmax takes the lower token id, as torch's does. A no-op in fp32."""
    return logits_BV.astype(compute_dtype).astype(jnp.float32)


def presence_mask(ids_BT: jax.Array, vocab_size: int, lengths_B=None) -> jax.Array:
    """[B, V] bool: True where the token occurs in the row (the prompt, for a start). Padding
    must not count (transformers skips a row's left padding): with `lengths_B` row b's ids end
    at lengths_B[b] (right-padding, lengths >= 1)."""
    if lengths_B is not None:  # padding repeats the row's first id, which counts anyway
        real = jnp.arange(ids_BT.shape[1])[None, :] < lengths_B[:, None]
        ids_BT = jnp.where(real, ids_BT, ids_BT[:, :1])
    rows = jnp.arange(ids_BT.shape[0])[:, None]
    return jnp.zeros((ids_BT.shape[0], vocab_size), bool).at[rows, ids_BT].set(True)


def mark_seen(seen_BV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    return seen_BV.at[jnp.arange(tokens_B.shape[0]), tokens_B].set(True)


def repetition_penalty(scores_BV, seen_BV, penalty: float):
    """RepetitionPenaltyLogitsProcessor: shrinks a seen token's score towards (and past) zero."""
    penalized = jnp.where(scores_BV < 0, scores_BV * penalty, scores_BV / penalty)
    return jnp.where(seen_BV, penalized, scores_BV)


def top_k_filter(scores_BV, top_k: int):
    """TopKLogitsWarper: -inf below the k-th largest score (ties with it stay)."""
    kth = jax.lax.top_k(scores_BV, min(top_k, scores_BV.shape[-1]))[0][:, -1:]
    return jnp.where(scores_BV < kth, -jnp.inf, scores_BV)


def top_p_filter(scores_BV, top_p: float):
    """TopPLogitsWarper: in ascending order, drops the tokens whose cumulative probability is at
    most 1 - top_p, always keeping the most likely one. Where tokens tie in score across the
    boundary, which of them are dropped follows this stable sort (lower ids first); torch's sort
    leaves that order unspecified (on CPU it put tied ids in descending order), so the kept set
    can differ from transformers' in which tied ids it holds, not in their scores."""
    order = jnp.argsort(scores_BV, axis=-1)  # ascending, as transformers sorts
    ascending = jnp.take_along_axis(scores_BV, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    remove_sorted = (cumulative <= 1 - top_p).at[:, -1].set(False)
    rows = jnp.arange(scores_BV.shape[0])[:, None]
    remove = jnp.zeros(scores_BV.shape, bool).at[rows, order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, scores_BV)


def process_logits(logits_BV, sampling: Sampling, seen_BV=None):
    """The scores the token is chosen from (float32), through the processors in use."""
    scores = logits_BV.astype(jnp.float32)  # transformers processes fp32 logits
    if sampling.uses_penalty:
        if seen_BV is None:
            raise ValueError("a repetition penalty needs the seen-tokens mask (seen_BV)")
        scores = repetition_penalty(scores, seen_BV, sampling.repetition_penalty)
    if not sampling.do_sample:
        return scores
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k != 0:
        scores = top_k_filter(scores, sampling.top_k)
    if sampling.top_p < 1.0:
        scores = top_p_filter(scores, sampling.top_p)
    return scores


def sample_token(logits_BV, key, sampling: Sampling = GREEDY, seen_BV=None):
    """The next token per row (int32 [B]): a draw from the processed scores, or their argmax."""
    scores = process_logits(logits_BV, sampling, seen_BV)
    if sampling.do_sample:
        return jax.random.categorical(key, scores, axis=-1).astype(jnp.int32)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
