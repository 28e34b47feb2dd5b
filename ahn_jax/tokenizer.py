"""Tokenizers: a checkpoint's HF `tokenizer.json` with Qwen's chat template; a byte tokenizer.

The chat template is Qwen2.5-Instruct's ChatML (without tool calls), written out in Python so that
training, evaluation and generation format conversations identically without a Jinja runtime;
evaluation and generation insert the default system turn of the checkpoint's own template
(Qwen2.5's or Qwen2's, `default_system_of`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import tokenizers

# Qwen2.5's own default system prompt. LLaMA-Factory's qwen template (the reference's SFT) inserts
# it too when a conversation has none (since April 2025; before: "You are a helpful assistant.";
# the reference's pins date its fork to May 2025: docs/method.md §Training)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2-Instruct's (and Qwen1.5's) template inserts this one instead
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHAT_ROLES = ("system", "user", "assistant")


def chat_segments(
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    default_system: str = QWEN_DEFAULT_SYSTEM,
) -> list[tuple[str, bool]]:
    """Qwen2.5's chat template as (text, is it learned) segments: a system turn (given or default),
    then each turn, then optionally the opening of the assistant's reply. Joined they are
    `render_chat`'s text. They are the pieces that LLaMA-Factory's qwen template tokenizes one by
    one (docs/method.md §Training): the system turn; a whole user turn; an assistant turn split
    into its header and its reply, and only the reply with its closing `<|im_end|>\n` is learned.
    Tokenized piece by piece, a reply that starts with whitespace is not merged with the header's
    `\n`, as in the reference."""
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}].role = {role!r} is not supported; use {CHAT_ROLES}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}].content must be a string")
    turns = list(messages)
    if turns and turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    else:
        system = default_system
    segments = [(f"{IM_START}system\n{system}{IM_END}\n", False)]
    for message in turns:
        role, content = message["role"], message["content"]
        if role == "assistant":
            segments += [(f"{IM_START}{role}\n", False), (f"{content}{IM_END}\n", True)]
        else:
            segments.append((f"{IM_START}{role}\n{content}{IM_END}\n", False))
    if add_generation_prompt:
        segments.append((f"{IM_START}assistant\n", False))
    return segments


def render_chat(
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    default_system: str = QWEN_DEFAULT_SYSTEM,
) -> str:
    """Qwen2.5's chat template rendered as text (`chat_segments` joined)."""
    segments = chat_segments(
        messages, add_generation_prompt=add_generation_prompt, default_system=default_system
    )
    return "".join(text for text, _ in segments)


def user_turn_frame(default_system: str = QWEN_DEFAULT_SYSTEM) -> tuple[str, str]:
    """(opening, closing): the chat template's text before and after one user message, the
    assistant's header included in the closing, for prompts built piece by piece around it."""
    rendered = render_chat(
        [{"role": "user", "content": "\0"}], add_generation_prompt=True,
        default_system=default_system,
    )  # fmt: skip
    opening, closing = rendered.split("\0")
    return opening, closing


def checkpoint_chat_template(directory: str | Path) -> str | None:
    """The chat template a checkpoint ships: transformers 5's `chat_template.jinja`, else
    `tokenizer_config.json`'s "chat_template" (a string, or named templates: "default")."""
    directory = Path(directory)
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text()
    config = directory / "tokenizer_config.json"
    try:
        template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    except (json.JSONDecodeError, AttributeError) as error:  # not a JSON object
        warnings.warn(
            f"{config} is not readable JSON ({error}); no chat template read", stacklevel=2
        )
        return None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def default_system_of(template: str | None, source: str = "the checkpoint") -> str:
    """The system prompt a Qwen ChatML template inserts when a conversation has none: Qwen2.5's
    (also without a template), or Qwen2's. Our rendering is ChatML: a template of another form
    is warned about, not followed."""
    if template is None or QWEN_DEFAULT_SYSTEM in template:
        return QWEN_DEFAULT_SYSTEM
    if QWEN2_DEFAULT_SYSTEM in template and IM_START in template:
        return QWEN2_DEFAULT_SYSTEM
    warnings.warn(
        f"the chat template of {source} is not Qwen2's or Qwen2.5's; chat prompts are rendered "
        "with Qwen2.5's",
        stacklevel=2,
    )
    return QWEN_DEFAULT_SYSTEM


class HFTokenizer:
    """A `tokenizers.Tokenizer` loaded from a checkpoint directory's `tokenizer.json`, with the
    default system prompt of the checkpoint's chat template (`default_system_of`)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, default_system: str = QWEN_DEFAULT_SYSTEM):
        self._tokenizer = tokenizer
        self.default_system = default_system

    @classmethod
    def from_dir(cls, directory: str | Path) -> HFTokenizer:
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {directory}")
        system = default_system_of(checkpoint_chat_template(directory), str(directory))
        return cls(tokenizers.Tokenizer.from_file(str(path)), system)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return token_id

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        add_generation_prompt: bool = False,
        default_system: str | None = None,
    ) -> list[int]:
        """The conversation as the checkpoint's Qwen chat template renders it, tokenized;
        `default_system` (None: the checkpoint's) is the system turn of one without its own."""
        text = render_chat(
            messages,
            add_generation_prompt=add_generation_prompt,
            default_system=self.default_system if default_system is None else default_system,
        )
        return self.encode(text)


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: the vocabulary of our tiny CPU models. Its chats are
    rendered with Qwen2.5's template and system prompt, as training renders them."""

    vocab_size = 256
    default_system = QWEN_DEFAULT_SYSTEM

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        del skip_special_tokens  # bytes have no special tokens
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
