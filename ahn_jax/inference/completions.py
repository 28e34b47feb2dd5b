"""The generate command's prompts and outputs (ahn_jax/generate.py): one prompt streamed to
stdout as it is generated, or a JSONL of prompts ("prompt" text or chat "messages") completed in
ragged batches of similar lengths and written in the input's order. Generation itself is
ahn_jax/inference/generate.py."""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app

from ahn_jax.inference import run_mode
from ahn_jax.inference.generate import generate
from ahn_jax.inference.generation_config import DEFAULTS, GenerationSettings
from ahn_jax.inference.partial_output import PartialOutput
from ahn_jax.jsonl import read_jsonl

# what a character split over tokens decodes to until its last byte comes
REPLACEMENT = "\ufffd"


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


def check_chat(tokenizer, asked_by: str = '--chat or a "messages" record') -> None:
    """Chat prompts need a tokenizer with the chat template: a byte vocabulary has none."""
    if not hasattr(tokenizer, "apply_chat_template"):
        raise app.UsageError(
            f"a chat prompt ({asked_by}) needs the model's tokenizer.json; this model's "
            "vocabulary is bytes: give plain prompts"
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
    mode, window, sinks = settings["mode"], settings.get("window"), settings.get("sinks", 0)
    if mode == "full" or not prompts:
        return
    try:
        attended = max(run_mode.attended(len(p), generation.new_tokens(len(p))) for p in prompts)
    except ValueError:  # reported where the tokens are generated
        return
    if run_mode.window_unused(mode, settings.get("decode", "exact"), attended, window, sinks):
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
    # SeedSequence takes non-negative ints; --seed may be negative, as jax.random.key takes it
    return int(np.random.SeedSequence([seed % 2**64, start]).generate_state(1)[0])


def complete_jsonl(
    model,
    tokenizer,
    path: str,
    *,
    chat: bool,
    batch_size: int,
    generation: GenerationSettings = DEFAULTS,
    partial: PartialOutput | None = None,
    **settings,
) -> list[str]:
    """Each record of a prompts JSONL with its "completion" added, as JSON lines in the input's
    order. Prompts are sorted by token length and decoded `batch_size` at a time as ragged
    batches (similar lengths together waste the least padding). With `partial`, each batch is
    kept there as it finishes, and the batches an earlier run kept are not generated again."""
    numbered = _read_jsonl(path)
    records = [record for _, record in numbered]
    encoded = []
    for number, record in numbered:
        try:  # the chat template's refusal, or a prompt past max_length: before any generation
            encoded.append(_encode(tokenizer, record, chat))
            generation.new_tokens(len(encoded[-1]))
        except ValueError as error:
            raise app.UsageError(f"{path}:{number}: {error}") from error
    if not encoded:
        return []
    _note_if_nothing_leaves_the_window(encoded, generation, **settings)
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    completions = partial.done() if partial is not None else {}
    if completions:
        print(f"resuming: {len(completions)}/{len(records)} prompts were generated before "
              f"({partial.path})", file=sys.stderr)  # fmt: skip
    for start in range(0, len(by_length), batch_size):
        batch = by_length[start : start + batch_size]
        if all(i in completions for i in batch):  # the same batches as before: the same seeds
            continue
        # each batch its own random stream: with one seed for all, row k of every batch drew the
        # same numbers (identical samples for equal prompts)
        seed = _batch_seed(settings.get("seed", 0), start)
        outputs = _generate_with(
            model, [encoded[i] for i in batch], generation, **{**settings, "seed": seed}
        )
        new = {i: tokenizer.decode(o) for i, o in zip(batch, outputs, strict=True)}
        if partial is not None:
            partial.add(new)
        completions.update(new)
        print(f"generated {len(completions)}/{len(records)}", file=sys.stderr)
    return [
        json.dumps({**records[i], "completion": completions[i]}, ensure_ascii=False)
        for i in range(len(records))
    ]
