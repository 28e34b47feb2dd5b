"""Checks of what users hand the model's public calls (`AhnModel.__call__`, `init_cache`,
`prefill`, `decode_step`): each bad argument is one ValueError naming it, before anything is
traced or compiled. XLA itself would not object: its gathers read out-of-range token ids as NaN
rows, a float window truncates, a zero-length batch divides by zero in the blocked attention.
Traced values (inside a user's own jit) are checked for shape and dtype only.
"""

from __future__ import annotations

import jax
import numpy as np


def _integer_dtype(dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


def count(value, name: str, low: int) -> int:
    """A Python or NumPy integer >= `low` as an int (a bool or a float is refused, not read as
    one: True would be a window of 1)."""
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not integer or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def token_ids(ids, vocab_size: int, name: str, ndim: int, *, values: bool = True) -> jax.Array:
    """Token ids as an array of `ndim` dims ([B, T] or [B]), none empty, of an integer dtype and,
    unless traced (or `values` is False), inside the vocabulary."""
    array = ids if isinstance(ids, jax.Array) else np.asarray(ids)
    shape = "[batch, length]" if ndim == 2 else "[batch]"
    if array.ndim != ndim or 0 in array.shape:
        raise ValueError(f"{name} must be {shape} with no empty dimension, got shape {array.shape}")
    if not _integer_dtype(array.dtype):
        raise ValueError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    if values and not isinstance(array, jax.core.Tracer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} holds ids outside the vocabulary [0, {vocab_size}) (min {low}, max "
                f"{high}): the embedding lookup would read them as NaN rows"
            )
    return jax.numpy.asarray(array)


def no_window(window, sinks, *, zero_is_none: bool = False) -> None:
    """Mode "full" of a public call attends the whole context: it takes no window or sinks
    (`zero_is_none`: a window of 0 reads as none, as evaluate's settings record mode full)."""
    given = window is not None and not (zero_is_none and window == 0)
    if given or isinstance(sinks, jax.core.Tracer) or np.any(np.asarray(sinks)):
        raise ValueError(
            "mode 'full' attends the whole context: window and sinks apply to modes 'swa' and "
            f"'ahn', got window={window!r}, sinks={sinks!r}"
        )


def window_and_sinks(mode: str, window, sinks) -> None:
    """Outside mode "full": `window` >= 1 and `sinks` >= 0, integers, scalars or one per row."""
    if mode == "full":
        return
    if window is None:
        raise ValueError(f"mode {mode!r} needs window=W (the sliding window, sinks excluded)")
    for name, value, low in (("window", window, 1), ("sinks", sinks, 0)):
        if isinstance(value, jax.core.Tracer):
            if not _integer_dtype(value.dtype):
                raise ValueError(f"{name} must be integers, got dtype {value.dtype}")
            continue
        array = np.asarray(value)
        if not _integer_dtype(array.dtype):
            raise ValueError(f"{name} must be an integer or integers, got {value!r}")
        if array.size and array.min() < low:
            raise ValueError(f"{name} must be >= {low}, got {array.min()}")


def room(cache, new_B) -> None:
    """The cache can take `new_B` more tokens per row without dropping one silently: a mode
    "full" cache holds init_cache's `window` tokens, the full-attention layers `max_length`
    (past them the oldest would leave, a sliding window). Reads the rows' lengths from the device
    only for such caches (one sync per call), and not at all inside a user's jit."""
    if isinstance(cache.length, jax.core.Tracer):
        return
    limits = []
    if cache.mode == "full":
        limits.append((cache.window, "mode 'full' holds init_cache(window=...)"))
    if cache.full_layers:
        limits.append(
            (cache.full_capacity, "the full-attention layers hold init_cache(max_length=...)")
        )
    if not limits:
        return
    longest = int(np.max(np.asarray(cache.length) + np.asarray(new_B)))
    for capacity, holds in limits:
        if longest > capacity:
            raise ValueError(
                f"the context would reach {longest} tokens, but {holds} = {capacity}: "
                "make the cache hold prompt + new tokens"
            )


def lengths(given, batch: int, width: int) -> np.ndarray:
    """Each row's prompt length [B] in [1, width] (default: all `width`)."""
    if given is None:
        return np.full((batch,), width, np.int64)
    array = np.asarray(given)
    if (
        array.shape != (batch,)
        or not _integer_dtype(array.dtype)
        or array.min() < 1
        or array.max() > width
    ):
        raise ValueError(
            f"lengths must give each of the {batch} rows an integer prompt length in "
            f"[1, {width}], got {array.tolist()}"
        )
    return array
