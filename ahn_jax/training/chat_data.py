"""Chat records -> token ids and labels, as the reference's SFT data (LLaMA-Factory's supervised
processor with its qwen template; docs/method.md §Training).

A conversation is an optional system turn, then user and assistant turns in alternation, starting
with the user and ending with the assistant; other shapes are bad records, as the reference drops
them. It is encoded as (prompt, reply) turns: the prompt is the system turn (the default one when
the record has none) with the first user turn, or a later user turn, and the assistant's header;
the reply is the assistant's text with its closing `<|im_end|>\\n`. Labels are the reply's tokens,
IGNORE on the prompt's. Over `cutoff_len` tokens, each turn gets `infer_seqlen` of the budget that
the turns before it left (prompt shortened first, its end cut; reply kept whole when it is under
half the budget); turns after the budget is spent are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ahn_jax.tokenizer import CHAT_ROLES, chat_segments
from ahn_jax.training.losses import IGNORE

# both forms take both spellings (LLaMA-Factory's sharegpt tags and OpenAI's roles)
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
         "assistant": "assistant"}  # fmt: skip
# the roles of tool use, which the reference's template renders and ours does not
TOOL_ROLES = ("function_call", "observation", "tool", "function")


class BadRecordError(ValueError):
    """A record that cannot be used; the message says why."""


def _turns_of(record) -> tuple[list, str, str]:
    if not isinstance(record, dict):
        raise BadRecordError("a chat record must be a JSON object")
    if "messages" in record:
        turns, role_key, text_key = record["messages"], "role", "content"
    elif "conversations" in record:
        turns, role_key, text_key = record["conversations"], "from", "value"
    else:
        raise BadRecordError('no "messages" or "conversations" field')
    if not isinstance(turns, list) or not turns:
        raise BadRecordError("the conversation is empty or not a list")
    return turns, role_key, text_key


def chat_messages(record, system_field: str = "") -> list[dict[str, str]]:
    """The conversation of a chat record in OpenAI form, whichever form it came in. Other fields
    are not read (a "tools" list either), as LLaMA-Factory reads no column its dataset_info.json
    does not map, the reference's ChatQA2 entry mapping only the messages; `system_field` names a
    top-level string that is the system turn where the conversation has none (its `system`
    column)."""
    turns, role_key, text_key = _turns_of(record)
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise BadRecordError(f'turn {i} lacks "{role_key}" or "{text_key}"')
        raw = turn[role_key]
        role = ROLES.get(raw) if isinstance(raw, str) else None
        if raw in TOOL_ROLES:
            raise BadRecordError(f"turn {i} is a tool turn ({raw!r}): not supported")
        if role not in CHAT_ROLES:
            raise BadRecordError(f"turn {i} has an unknown role {turn[role_key]!r}")
        text = turn[text_key]
        if role == "system" and text is None:  # the default system prompt, as an empty one
            text = ""
        if not isinstance(text, str):
            raise BadRecordError(f"turn {i}'s text is not a string")
        messages.append({"role": role, "content": text})
    # an empty system turn gets the default system prompt, as in the reference (`system or
    # default_system`)
    first = had_system = 1 if messages[0]["role"] == "system" else 0
    if first and not messages[0]["content"]:
        messages = messages[1:]
        first = 0
    for i, message in enumerate(messages[first:], start=first):
        expected = ("user", "assistant")[(i - first) % 2]
        if message["role"] != expected:
            raise BadRecordError(f"turn {i} is {message['role']!r} where {expected!r} must be")
    if len(messages) == first or (len(messages) - first) % 2:
        raise BadRecordError("the conversation must end with an assistant reply")
    system = record.get(system_field) if system_field else None
    if not had_system and isinstance(system, str) and system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """(prompt, reply) lengths of a turn in a budget of `cutoff_len` tokens, the reference's rule:
    a reply under half the budget is kept whole and the prompt gets the rest; otherwise a prompt
    under half the budget is kept whole and the reply gets the rest; otherwise the budget is shared
    in proportion to their lengths (the reply's share rounded down)."""
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    target = min(max_target, target_len)
    source = min(max(cutoff_len - target, 0), source_len)
    return source, target


def chat_turns(tokenizer, messages: Sequence[dict[str, str]]) -> list[tuple[list, list]]:
    """(prompt ids, reply ids) per assistant reply, each piece of `chat_segments` tokenized on its
    own as the reference's template does."""
    turns, prompt = [], []
    for text, learned in chat_segments(messages):
        ids = list(tokenizer.encode(text))
        if learned:
            turns.append((prompt, ids))
            prompt = []
        else:
            prompt += ids
    return turns


def truncate_turns(turns: Sequence[tuple[list, list]], cutoff_len: int):
    """Token ids and labels of the turns in `cutoff_len` tokens (the module's docstring): the
    kept length is min(total, cutoff_len), as the shares of `infer_seqlen` fill the budget."""
    ids, labels, total = [], [], 0
    for prompt, reply in turns:
        if total >= cutoff_len:
            break
        source, target = infer_seqlen(len(prompt), len(reply), cutoff_len - total)
        ids += prompt[:source] + reply[:target]
        labels += [IGNORE] * source + reply[:target]
        total += source + target
    return np.asarray(ids, np.int32), np.asarray(labels, np.int32)


def encode_chat(tokenizer, messages: Sequence[dict[str, str]], cutoff_len: int | None = None):
    """Token ids of the Qwen2.5 chat rendering and labels on the assistant's replies only, within
    `cutoff_len` tokens (None: all of them)."""
    turns = chat_turns(tokenizer, messages)
    total = sum(len(prompt) + len(reply) for prompt, reply in turns)
    return truncate_turns(turns, total if cutoff_len is None else cutoff_len)
