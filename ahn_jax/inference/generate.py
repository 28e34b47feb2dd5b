"""Text generation with the constant-size cache: prefill, then one jitted decode step per token
(the command line is ahn_jax/generate.py):

  python -m ahn_jax.generate --model DIR [--ahn DIR] (--prompt TEXT | --prompt_file F | --jsonl F)
      [--max_new_tokens N] [--mode ahn|swa|full] [--window W] [--sinks S]
      [--decode exact|reference] [--do_sample] [--temperature T] [--top_k K] [--top_p P]
      [--repetition_penalty R] [--chat] [--batch_size 8] [--out F.jsonl] [--dtype D]

A single prompt streams to stdout as it is generated. JSONL input (one object per line with
"prompt", or "messages" for a chat) is batched: prompts sorted by token length, `--batch_size` at
a time, each row of a batch at its own positions (ragged batches, `AhnModel.prefill(lengths=)`).
The token choice is transformers' (ahn_jax/inference/sampling.py), set by the checkpoint's
generation_config.json and the flags over it (ahn_jax/inference/generation_config.py); greedy
where neither says otherwise.
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

from ahn_jax.config import check_vocabulary
from ahn_jax.inference import sampling as sampling_lib
from ahn_jax.inference.generation_config import DEFAULTS, GenerationSettings
from ahn_jax.inference.sampling import Sampling, sample_token
from ahn_jax.jsonl import read_jsonl
from ahn_jax.model import transformer as model_lib
from ahn_jax.model.cache import DecodeCache
from ahn_jax.tokenizer import END_OF_TEXT, IM_END, ByteTokenizer, HFTokenizer

# what a character split over tokens decodes to until its last byte comes
REPLACEMENT = "\ufffd"


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
    window: int,
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

    `on_tokens` sees each step's tokens (-1 for finished rows), `on_prefill` (positions fed, the
    longest prompt) after each prefill chunk of `chunk_size` tokens, `on_cache` the final
    cache."""
    ids, lengths, budgets = _ragged_batch(prompts, max_new_tokens)
    model = model_lib.for_decoding(model)  # per-layer weights on the CPU (its docstring)
    sampling = Sampling(do_sample, temperature, top_k, top_p, repetition_penalty)
    total = int((lengths + budgets).max())  # the longest row's context
    if mode == "full":  # plain attention: a window that holds the whole sequence
        window, sinks = total, 0
    cache = model.init_cache(
        len(prompts), window=window, sinks=sinks, mode=mode, decode=decode, max_length=total
    )
    logits, cache = model.prefill(
        ids, cache, lengths=lengths, chunk_size=chunk_size, on_chunk=on_prefill
    )
    key, sub = jax.random.split(jax.random.key(seed))
    loop = _DecodeLoop(model, cache, sampling)
    tokens, seen = _first(logits, *map(jnp.asarray, (ids, lengths)), sub, sampling, loop.dtype)
    out, done = np.zeros((len(prompts), 0), np.int32), np.zeros(len(prompts), bool)
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
    if on_cache is not None:
        on_cache(loop.cache())
    return [[int(t) for t in row if t >= 0] for row in out]


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


def _read_jsonl(path: str) -> list[dict]:
    """Records with "prompt" text or chat "messages"; a malformed line is an error naming it."""
    records = []
    for number, record in read_jsonl(path, on_invalid=_usage_error):
        if problem := _record_problem(record):
            raise app.UsageError(f"{path}:{number}: {problem}")
        records.append((number, record))
    return records


def _record_problem(record) -> str | None:
    """Why a prompts record cannot be generated from, or None."""
    if not isinstance(record, dict) or not (
        isinstance(record.get("prompt"), str) or isinstance(record.get("messages"), list)
    ):
        return 'needs a "prompt" string or "messages" list'
    if "messages" not in record:
        return None if record["prompt"] else "the prompt is empty"
    messages = record["messages"]
    if not messages:
        return '"messages" is empty'
    # roles and contents are the chat template's to check (its ValueError names the message)
    wrong = [i for i, message in enumerate(messages) if not isinstance(message, dict)]
    return f'messages[{wrong[0]}] is not a {{"role", "content"}} object' if wrong else None


def _usage_error(error: Exception):
    raise app.UsageError(str(error)) from error


def check_chat(tokenizer) -> None:
    """Chat prompts need a tokenizer with the chat template: a byte vocabulary has none."""
    if not hasattr(tokenizer, "apply_chat_template"):
        raise app.UsageError(
            'a chat prompt (--chat or a "messages" record) needs the model\'s tokenizer.json; '
            "this model's vocabulary is bytes: give plain prompts"
        )


def _encode(tokenizer, record: dict, chat: bool) -> list[int]:
    if "messages" in record or chat:
        check_chat(tokenizer)
        messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(record["prompt"])


def _note_if_nothing_leaves_the_window(prompts, generation: GenerationSettings, **settings):
    """Tell (stderr) when every prompt with its new tokens fits in S + W: in mode ahn or swa no
    token is then evicted, and the output is full attention's (a W recorded for a long-context
    model, 32,640, on short prompts: the AHN is never used)."""
    mode, window, sinks = settings["mode"], settings["window"], settings.get("sinks", 0)
    # the reference's decode drops cache index 128 at every step, evicted or not
    if mode == "full" or settings.get("decode") == "reference" or not prompts:
        return
    try:
        # the last new token is chosen, never attended: a prompt of P and n new tokens attends
        # P + n - 1, and none is evicted while that is at most S + W
        attended = max(len(p) + generation.new_tokens(len(p)) - 1 for p in prompts)
    except ValueError:  # reported where the tokens are generated
        return
    if attended <= sinks + window:
        memory = "the AHN memory is not used" if mode == "ahn" else "the window changes nothing"
        print(
            f"note: mode {mode}: no token leaves S + W = {sinks + window} (at most {attended} "
            f"tokens are attended), so the output is full attention's and {memory}; a smaller "
            "--window would evict",
            file=sys.stderr,
        )


def _generate_with(model, prompts, generation: GenerationSettings, **settings):
    """`generate` with the length and token choice of `generation` (`settings`: the rest)."""
    try:
        max_new_tokens = [generation.new_tokens(len(p)) for p in prompts]
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    return generate(
        model, prompts, max_new_tokens=max_new_tokens, **generation.sampling_kwargs(), **settings
    )


def stream_completion(
    model,
    tokenizer,
    text: str,
    *,
    chat: bool,
    generation: GenerationSettings = DEFAULTS,
    **settings,
) -> None:
    """Generate for one prompt (`settings`: `generate`'s but the length and the token choice,
    which come from `generation`), writing the new text to stdout as it comes."""
    if not text:
        raise app.UsageError("the prompt is empty")
    ids = _encode(tokenizer, {"prompt": text}, chat)
    _note_if_nothing_leaves_the_window([ids], generation, **settings)
    streamed: list[int] = []
    shown = ""

    def show(text: str) -> None:
        nonlocal shown
        sys.stdout.write(text[len(shown) :])
        sys.stdout.flush()
        shown = text

    def stream(new):
        if new[0] >= 0:
            streamed.append(int(new[0]))
            text = tokenizer.decode(streamed)
            # a character split over tokens (byte-level BPE: emoji, rare CJK) decodes as U+FFFD
            # until its last byte comes: written then, it was never replaced
            if not text.endswith(REPLACEMENT):
                show(text)

    _generate_with(model, [ids], generation, on_tokens=stream, **settings)
    show(tokenizer.decode(streamed))  # what is still held back (bytes that never completed)
    sys.stdout.write("\n")


def _batch_seed(seed: int, start: int) -> int:
    """The seed of the batch whose first prompt is number `start` in length order."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def complete_jsonl(
    model,
    tokenizer,
    path: str,
    *,
    chat: bool,
    batch_size: int,
    generation: GenerationSettings = DEFAULTS,
    **settings,
) -> list[str]:
    """Each record of a prompts JSONL with its "completion" added, as JSON lines in the input's
    order. Prompts are sorted by token length and decoded `batch_size` at a time as ragged
    batches (similar lengths together waste the least padding)."""
    numbered = _read_jsonl(path)
    records = [record for _, record in numbered]
    encoded = []
    for number, record in numbered:
        try:
            encoded.append(_encode(tokenizer, record, chat))
        except ValueError as error:  # the chat template's refusal
            raise app.UsageError(f"{path}:{number}: {error}") from error
    if not encoded:
        return []
    for number, ids in zip((n for n, _ in numbered), encoded, strict=True):
        try:  # every prompt's length checked before any is generated
            generation.new_tokens(len(ids))
        except ValueError as error:
            raise app.UsageError(f"{path}:{number}: {error}") from error
    _note_if_nothing_leaves_the_window(encoded, generation, **settings)
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    completions: dict[int, str] = {}
    for start in range(0, len(by_length), batch_size):
        batch = by_length[start : start + batch_size]
        # each batch its own random stream: with one seed for all, row k of every batch drew the
        # same numbers (identical samples for equal prompts)
        seed = _batch_seed(settings.get("seed", 0), start)
        outputs = _generate_with(
            model, [encoded[i] for i in batch], generation, **{**settings, "seed": seed}
        )
        completions.update({i: tokenizer.decode(o) for i, o in zip(batch, outputs, strict=True)})
        print(f"generated {len(completions)}/{len(records)}", file=sys.stderr)
    return [
        json.dumps({**records[i], "completion": completions[i]}, ensure_ascii=False)
        for i in range(len(records))
    ]
