"""Text generation with the constant-size cache: prefill, then one jitted decode step per token
(the command line is ahn_jax/generate.py):

  python -m ahn_jax.generate --model DIR [--ahn DIR] (--prompt TEXT | --prompt_file F | --jsonl F)
      [--max_new_tokens 128] [--mode ahn|swa|full] [--window 32640] [--sinks 128]
      [--temperature 0] [--top_p 1] [--chat] [--batch_size 8] [--out F.jsonl]

A single prompt streams to stdout as it is generated. JSONL input (one object per line with
"prompt", or "messages" for a chat) is batched: rows of a batch share positions (the cache has no
padding, as in the reference), so prompts are grouped by token length. Greedy by default;
`--temperature` > 0 samples, restricted to the top-p nucleus.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from flax import nnx

from ahn_jax.jsonl import read_jsonl
from ahn_jax.model import transformer as model_lib
from ahn_jax.model.cache import DecodeCache
from ahn_jax.tokenizer import END_OF_TEXT, IM_END, ByteTokenizer, HFTokenizer


def sample_token(logits_BV, key, temperature, top_p):
    """Greedy where temperature is 0, else a draw from the top-p nucleus of softmax(l / T)."""
    logits_BV = logits_BV.astype(jnp.float32)
    scaled = logits_BV / jnp.maximum(temperature, 1e-6)
    probs = jax.nn.softmax(scaled, axis=-1)
    sorted_probs = jnp.sort(probs, axis=-1)[:, ::-1]
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the tokens ranked above
    kept = jnp.where(before < top_p, sorted_probs, jnp.inf).min(axis=-1, keepdims=True)
    sampled = jax.random.categorical(key, jnp.where(probs >= kept, scaled, -jnp.inf), axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits_BV, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _step(graphdef, state, tokens_B, cache, key, temperature, top_p):
    logits, cache = model_lib.decode_step(graphdef, state, tokens_B, cache)
    return sample_token(logits, key, temperature, top_p), cache


def generate(
    model: model_lib.AhnModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    mode: str,
    window: int,
    sinks: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    on_tokens: Callable[[np.ndarray], None] | None = None,
    on_cache: Callable[[DecodeCache], None] | None = None,
) -> list[list[int]]:
    """New tokens for a batch of equally long prompts (stops at a stop id, not included).

    `on_tokens` sees each step's tokens (-1 for finished rows), `on_cache` the final cache."""
    lengths = {len(p) for p in prompts}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"a batch needs non-empty prompts of one length, got lengths {lengths}")
    ids = jnp.asarray(np.asarray(prompts, np.int32))
    if mode == "full":  # plain attention: a window that holds the whole sequence
        window, sinks = ids.shape[1] + max_new_tokens, 0
    cache = model.init_cache(len(prompts), window=window, sinks=sinks, mode=mode)
    logits, cache = model.prefill(ids, cache)
    key = jax.random.key(seed)
    temperature, top_p = jnp.float32(temperature), jnp.float32(top_p)
    key, sub = jax.random.split(key)
    tokens = sample_token(logits, sub, temperature, top_p)
    graphdef, state = nnx.split(model)
    out = np.zeros((len(prompts), 0), np.int32)
    done = np.zeros(len(prompts), bool)
    for i in range(max_new_tokens):
        new = np.asarray(tokens)
        done_before = done.copy()
        done |= np.isin(new, list(stop_ids))
        new = np.where(done, -1, new)
        out = np.concatenate([out, new[:, None]], axis=1)
        if on_tokens is not None:
            on_tokens(np.where(done_before, -1, new))
        if done.all() or i == max_new_tokens - 1:
            break
        key, sub = jax.random.split(key)
        tokens, cache = _step(graphdef, state, tokens, cache, sub, temperature, top_p)
    if on_cache is not None:
        on_cache(cache)
    return [[int(t) for t in row if t >= 0] for row in out]


def load_tokenizer(model_dir: str, vocab_size: int):
    if (Path(model_dir) / "tokenizer.json").is_file():
        return HFTokenizer.from_dir(model_dir)
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


def _read_jsonl(path: str) -> list[dict]:
    """Records with "prompt" text or chat "messages"; a malformed line is an error naming it."""
    records = []
    for number, record in read_jsonl(path, on_invalid=_usage_error):
        if not isinstance(record, dict) or not (
            isinstance(record.get("prompt"), str) or isinstance(record.get("messages"), list)
        ):
            raise app.UsageError(f'{path}:{number}: needs a "prompt" string or "messages" list')
        records.append(record)
    return records


def _usage_error(error: Exception):
    raise app.UsageError(str(error)) from error


def _encode(tokenizer, record: dict, chat: bool) -> list[int]:
    if "messages" in record or chat:
        messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(record["prompt"])


def stream_completion(model, tokenizer, text: str, *, chat: bool, **settings) -> None:
    """Generate for one prompt (`settings`: `generate`'s), writing the new text to stdout as it
    comes."""
    ids = _encode(tokenizer, {"prompt": text}, chat)
    streamed: list[int] = []

    def stream(new):
        if new[0] >= 0:
            before = tokenizer.decode(streamed)
            streamed.append(int(new[0]))
            sys.stdout.write(tokenizer.decode(streamed)[len(before) :])
            sys.stdout.flush()

    generate(model, [ids], on_tokens=stream, **settings)
    sys.stdout.write("\n")


def complete_jsonl(
    model, tokenizer, path: str, *, chat: bool, batch_size: int, **settings
) -> list[str]:
    """Each record of a prompts JSONL with its "completion" added, as JSON lines in the input's
    order. Prompts of one token length are decoded together, `batch_size` at a time."""
    records = _read_jsonl(path)
    encoded = [_encode(tokenizer, r, chat) for r in records]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    completions: dict[int, str] = {}
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            outputs = generate(model, [encoded[i] for i in batch], **settings)
            completions.update(
                {i: tokenizer.decode(o) for i, o in zip(batch, outputs, strict=True)}
            )
            print(f"generated {len(completions)}/{len(records)}", file=sys.stderr)
    return [
        json.dumps({**records[i], "completion": completions[i]}, ensure_ascii=False)
        for i in range(len(records))
    ]
