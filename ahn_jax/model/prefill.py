"""Prefill's loop over chunks of the prompt (`AhnModel.prefill`), each chunk one call of the jitted
`extend` (transformer.extend_cache or extend_cache_in_place with the model bound): P new tokens
per row against the cache.

The cache each chunk returns is the loop's own, so the next chunk donates it and XLA writes the
new slots where it lies: an accelerator holds one cache, not two, through a long prompt. The
caller's cache is donated only when the caller says so (`donate`). On the CPU a chunk leaves out
the rows whose prompts have ended (their cache rows taken out and put back); on an accelerator
every row runs every chunk, the ended ones with no new tokens (which leaves their rows as they
were), as the rows taken out would be a second, partial cache in device memory (Qwen2.5-3B at
W = 32,640 compiled for one v5e chip: a 4-row chunk peaks at 13.0 GiB; by arithmetic, 3 of the
rows taken out beside the cache would pass the 15.75 GiB XLA allows: docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, donate_argnums=0)
def _with_rows_in_place(cache, index, part):
    """`cache.with_rows(index, part)` written into the donated cache (eagerly, each array was
    copied whole to replace a few rows)."""
    return cache.with_rows(index, part)


def ended_rows_left_out() -> bool:
    """Whether a chunk leaves out the rows whose prompts have ended: on the CPU (the module's
    docstring)."""
    return jax.default_backend() == "cpu"


def in_chunks(
    extend, input_ids, cache, lengths: np.ndarray, chunk_size: int, *, all_logits: bool,
    on_chunk: Callable[[int, int], None] | None, donate: bool = False,
):  # fmt: skip
    """(logits, cache) of `AhnModel.prefill`, its arguments checked: each row's logits at its
    last prompt token [B, V], or every position's [B, P, V] with `all_logits`. `extend(ids,
    cache, new, all_logits=False, *, in_place)` advances a cache by one chunk, donating it when
    `in_place`; the caller's cache is donated only with `donate`. Where `ended_rows_left_out()`
    a chunk runs only the rows whose prompts reach it, else every row (the ended ones with no new
    tokens, which leaves them as they were)."""
    B, P = input_ids.shape
    owned = donate  # whether `cache` may be donated: after the first chunk it is the loop's own
    leave_out = ended_rows_left_out()

    def computed(logits, start, total):
        if on_chunk is not None:  # waits for the chunk: what the caller reports has been done
            jax.block_until_ready(logits)
            on_chunk(min(start + chunk_size, total), total)

    if all_logits:
        pieces = []
        for start in range(0, P, chunk_size):
            new = jnp.asarray(np.clip(lengths - start, 0, chunk_size), jnp.int32)
            chunk = input_ids[:, start : start + chunk_size]
            logits, cache = extend(chunk, cache, new, True, in_place=owned)
            owned = True
            pieces.append(logits)
            computed(logits, start, P)
        return jnp.concatenate(pieces, axis=1), cache
    last, host_ids = None, np.asarray(input_ids)  # chunks cut on the host: no eager gathers
    longest = int(lengths.max())
    for start in range(0, longest, chunk_size):
        # on the CPU only the rows with prompt left run the chunk (the rest would be padding): a
        # ragged batch costs the tokens it holds, not B times the longest; on an accelerator
        # every row does (the module's docstring)
        active = np.flatnonzero(lengths > start) if leave_out else np.arange(B)
        new = jnp.asarray(np.clip(lengths[active] - start, 0, chunk_size), jnp.int32)
        chunk = jnp.asarray(host_ids[active, start : start + chunk_size])
        if len(active) == B:
            logits, cache = extend(chunk, cache, new, in_place=owned)
        else:  # a later chunk (every prompt has a token for the first): the cache is the loop's
            index = jnp.asarray(active)
            logits, part = extend(chunk, cache.rows(index), new, in_place=True)
            cache = _with_rows_in_place(cache, index, part)
        owned = True
        # a row's logits come from the chunk that holds its last prompt token
        fed = np.flatnonzero(lengths[active] > start)
        last = logits if last is None else last.at[active[fed]].set(logits[fed])
        computed(logits, start, longest)
    return last, cache
