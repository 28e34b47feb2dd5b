"""Prefill's loop over chunks of the prompt (`AhnModel.prefill`), each chunk one call of the jitted
`extend` (transformer.extend_cache with the model bound): P new tokens per row against the cache.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def in_chunks(
    extend, input_ids, cache, lengths: np.ndarray, chunk_size: int, *, all_logits: bool,
    on_chunk: Callable[[int, int], None] | None,
):  # fmt: skip
    """(logits, cache) of `AhnModel.prefill`, its arguments checked: each row's logits at its
    last prompt token [B, V], or every position's [B, P, V] with `all_logits`."""
    B, P = input_ids.shape

    def computed(logits, start, total):
        if on_chunk is not None:  # waits for the chunk: what the caller reports has been done
            jax.block_until_ready(logits)
            on_chunk(min(start + chunk_size, total), total)

    if all_logits:
        pieces = []
        for start in range(0, P, chunk_size):
            new = jnp.asarray(np.clip(lengths - start, 0, chunk_size), jnp.int32)
            logits, cache = extend(input_ids[:, start : start + chunk_size], cache, new, True)
            pieces.append(logits)
            computed(logits, start, P)
        return jnp.concatenate(pieces, axis=1), cache
    last, host_ids = None, np.asarray(input_ids)  # chunks cut on the host: no eager gathers
    longest = int(lengths.max())
    for start in range(0, longest, chunk_size):
        # only the rows with prompt left run the chunk (the rest would be padding): a ragged
        # batch costs the tokens it holds, not B times the longest
        active = np.flatnonzero(lengths > start)
        new = jnp.asarray(np.clip(lengths[active] - start, 0, chunk_size), jnp.int32)
        chunk = jnp.asarray(host_ids[active, start : start + chunk_size])
        part = cache if len(active) == B else cache.rows(active)
        logits, part = extend(chunk, part, new)
        cache = part if len(active) == B else cache.with_rows(active, part)
        # a row's logits come from the chunk that holds its last prompt token
        last = logits if last is None else last.at[active].set(logits)
        computed(logits, start, longest)
    return last, cache
