"""Text generation with the constant-size cache: prefill, then one jitted decode step per token
(the command line is ahn_jax/generate.py):

  python -m ahn_jax.generate --model DIR [--ahn DIR] (--prompt TEXT | --prompt_file F | --jsonl F)
      [--max_new_tokens N] [--mode ahn|swa|full] [--window W] [--sinks S]
      [--decode exact|reference] [--do_sample] [--temperature T] [--top_k K] [--top_p P]
      [--repetition_penalty R] [--chat] [--batch_size 8] [--out F.jsonl] [--dtype D]

A single prompt streams to stdout as it is generated. JSONL input (one object per line with
"prompt", or "messages" for a chat) is batched: prompts sorted by token length, `--batch_size` at
a time, each row of a batch at its own positions (ragged batches, `AhnModel.prefill(lengths=)`);
the command's prompts and outputs are ahn_jax/inference/completions.py.
The token choice is transformers' (ahn_jax/inference/sampling.py), set by the checkpoint's
generation_config.json and the flags over it (ahn_jax/inference/generation_config.py); greedy
where neither says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahn_jax.config import check_vocabulary
from ahn_jax.inference import sampling as sampling_lib
from ahn_jax.inference.sampling import Sampling, sample_token
from ahn_jax.model import inputs
from ahn_jax.model import transformer as model_lib
from ahn_jax.model.cache import DecodeCache
from ahn_jax.model.layerwise import for_decoding
from ahn_jax.tokenizer import END_OF_TEXT, IM_END, ByteTokenizer, HFTokenizer

FULL_CACHE_STEP = 256


@functools.partial(jax.jit, static_argnames=("sampling", "compute_dtype"))
def _first(logits_BV, prompt_BT, lengths_B, key, sampling: Sampling, compute_dtype):
    """The token after the prompt, and the seen-tokens mask (None without a penalty)."""
    logits_BV = sampling_lib.as_transformers_sees(logits_BV, compute_dtype)
    seen = (
        sampling_lib.presence_mask(prompt_BT, logits_BV.shape[-1], lengths_B)
        if sampling.uses_penalty
        else None
    )
    return sample_token(logits_BV, key, sampling, seen), seen


# The decode loop hands the step flat lists of arrays and their tree structures (static): jit
# flattens a list of arrays in C++, where the model's nnx State and the DecodeCache flatten
# through Python callbacks on every call (~0.3 ms a token for the tiny model). The cache is
# donated: XLA writes each step's new slots into it in place (ahn_jax/model/cached.py). The
# random key is split inside the step, saving a dispatch per token.
@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "trees", "sampling", "compute_dtype"),
    donate_argnames=("cache_leaves",),
)
def _step(
    graphdef, trees, state_leaves, tokens_B, cache_leaves, seen_BV, key, sampling, compute_dtype
):
    state_tree, cache_tree = trees
    state = jax.tree.unflatten(state_tree, state_leaves)
    cache = jax.tree.unflatten(cache_tree, cache_leaves)
    logits, cache = model_lib.decode_step(graphdef, state, tokens_B, cache)
    logits = sampling_lib.as_transformers_sees(logits, compute_dtype)
    if seen_BV is not None:  # the fed token is now part of the row
        seen_BV = sampling_lib.mark_seen(seen_BV, tokens_B)
    key, sub = jax.random.split(key)
    return sample_token(logits, sub, sampling, seen_BV), jax.tree.leaves(cache), seen_BV, key


class _DecodeLoop:
    """`_step`'s arguments, the model state and the cache flattened once; the cache's leaves are
    replaced (donated) at every step."""

    def __init__(self, model, cache: DecodeCache, sampling: Sampling):
        self.graphdef, state = nnx.split(model)
        self.state_leaves, state_tree = jax.tree.flatten(state)
        self.cache_leaves, cache_tree = jax.tree.flatten(cache)
        self.trees = (state_tree, cache_tree)
        self.sampling, self.dtype = sampling, model.config.jnp_dtype

    def step(self, tokens_B, seen_BV, key):
        """The next tokens, seen mask and key after `tokens_B`."""
        tokens_B, self.cache_leaves, seen_BV, key = _step(
            self.graphdef, self.trees, self.state_leaves, tokens_B, self.cache_leaves, seen_BV,
            key, self.sampling, self.dtype,
        )  # fmt: skip
        return tokens_B, seen_BV, key

    def cache(self) -> DecodeCache:
        return jax.tree.unflatten(self.trees[1], self.cache_leaves)


def generate(
    model: model_lib.AhnModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int],
    mode: str,
    window: int | None = None,
    sinks: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    decode: str = "exact",
    on_tokens: Callable[[np.ndarray], None] | None = None,
    on_cache: Callable[[DecodeCache], None] | None = None,
    on_prefill: Callable[[int, int], None] | None = None,
    chunk_size: int = 1024,
) -> list[list[int]]:
    """New tokens for a batch of prompts of any lengths (stops at a stop id, not included), at
    most `max_new_tokens` (one budget, or one per prompt). The token choice is transformers'
    `generate` with the same keywords (greedy by default). Prompts are right-padded into one
    ragged batch: each row prefills and decodes from its own length, as if alone.

    `window` and `sinks` are the cache's W and S in modes "swa" and "ahn"; mode "full" sizes its
    cache to the longest row's context (rounded up to FULL_CACHE_STEP positions, so that
    batches of nearby lengths share one compiled program) and takes neither (a window of 0 is
    read as none). `on_tokens` sees each step's tokens (-1 for finished rows), `on_prefill`
    (positions fed, the longest prompt) after each prefill chunk of `chunk_size` tokens,
    `on_cache` the final cache."""
    ids, lengths, budgets = _ragged_batch(prompts, max_new_tokens)
    model = for_decoding(model)  # per-layer weights on the CPU (its docstring)
    sampling = Sampling(do_sample, temperature, top_k, top_p, repetition_penalty)
    total = int((lengths + budgets).max())  # the longest row's context
    if mode == "full":  # plain attention: a window that holds the whole sequence
        inputs.no_window(window, sinks, zero_is_none=True)
        window = total = -(-total // FULL_CACHE_STEP) * FULL_CACHE_STEP
    else:
        inputs.window_and_sinks(mode, window, sinks)
    cache = model.init_cache(
        len(prompts), window=window, sinks=sinks, mode=mode, decode=decode, max_length=total
    )
    logits, cache = model.prefill(  # the cache is ours: updated in place
        ids, cache, lengths=lengths, chunk_size=chunk_size, on_chunk=on_prefill, donate=True
    )
    key, sub = jax.random.split(jax.random.key(seed))
    loop = _DecodeLoop(model, cache, sampling)
    tokens, seen = _first(logits, *map(jnp.asarray, (ids, lengths)), sub, sampling, loop.dtype)
    out = _decode(loop, tokens, seen, key, budgets, stop_ids, on_tokens)
    if on_cache is not None:
        on_cache(loop.cache())
    return [[int(t) for t in row if t >= 0] for row in out]


def _decode(loop, tokens, seen, key, budgets, stop_ids, on_tokens) -> np.ndarray:
    """[B, n] new tokens from the first ones (`tokens`), -1 after a row's stop or budget."""
    out, done = np.zeros((len(budgets), 0), np.int32), np.zeros(len(budgets), bool)
    steps = int(budgets.max())
    for i in range(steps):
        current = tokens
        # the next step is dispatched before this one's tokens come to the host: the device
        # computes while Python checks stops and streams (after the last stop, one step is wasted)
        if i + 1 < steps:
            tokens, seen, key = loop.step(tokens, seen, key)
        done |= i >= budgets  # the row's budget is spent
        new = np.asarray(current)
        done |= np.isin(new, list(stop_ids))
        new = np.where(done, -1, new)
        out = np.concatenate([out, new[:, None]], axis=1)
        if on_tokens is not None:
            on_tokens(new)
        if done.all():
            break
    return out


def _ragged_batch(prompts, max_new_tokens):
    """Right-padded ids [B, T], the prompt lengths [B] and the token budgets [B]."""
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    budgets = np.broadcast_to(np.asarray(max_new_tokens, np.int64), lengths.shape)
    if not len(prompts) or lengths.min() < 1 or budgets.min() < 1:
        raise ValueError(
            f"generate needs non-empty prompts and budgets >= 1, got prompt lengths "
            f"{lengths.tolist()} and max_new_tokens {budgets.tolist()}"
        )
    ids = np.zeros((len(prompts), lengths.max()), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    return ids, lengths, budgets


def load_tokenizer(model_dir: str, vocab_size: int):
    """The checkpoint's tokenizer.json (which must fit the model's vocabulary), else bytes for a
    model of 256 tokens."""
    if (Path(model_dir) / "tokenizer.json").is_file():
        tokenizer = HFTokenizer.from_dir(model_dir)
        check_vocabulary(tokenizer.vocab_size, vocab_size, f"{model_dir}/tokenizer.json")
        return tokenizer
    if vocab_size == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise FileNotFoundError(f"no tokenizer.json in {model_dir} (and the vocabulary is not bytes)")


def stop_ids(tokenizer) -> list[int]:
    if isinstance(tokenizer, ByteTokenizer):
        return []
    ids = []
    for token in (IM_END, END_OF_TEXT):
        with contextlib.suppress(KeyError):  # a tokenizer without chat tokens
            ids.append(tokenizer.token_id(token))
    return ids
