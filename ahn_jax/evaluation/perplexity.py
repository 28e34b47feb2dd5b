"""Perplexity by position bucket, with documents fed through the constant-size cache."""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from flax import nnx
from tqdm import tqdm

from ahn_jax.cli import utf8_text
from ahn_jax.evaluation.batch_progress import BatchProgress
from ahn_jax.evaluation.results import (
    Settings,
    append_results,
    nothing_to_evaluate,
    scored_ids,
)
from ahn_jax.jsonl import read_jsonl
from ahn_jax.model import cached


def read_documents(files: Sequence[Path]) -> list[tuple[str, str]]:
    """(id, text) per document: a .jsonl line's "text" field, or a whole non-JSONL file."""
    documents = []
    for path in files:
        if path.suffix == ".jsonl":
            documents += _jsonl_documents(path)
        else:
            documents.append((path.stem, utf8_text(path, "--data")))
    return documents


def _jsonl_documents(path: Path) -> list[tuple[str, str]]:
    """A JSONL file's documents, its malformed lines reported on stderr and skipped; a file
    without one usable line is an error (app.UsageError)."""
    documents, skipped = [], []

    def skip(why) -> None:
        skipped.append(why)
        print(f"skipping {why}", file=sys.stderr)

    for number, record in read_jsonl(path, on_invalid=skip):
        text = record.get("text") if isinstance(record, dict) else None
        if isinstance(text, str):
            documents.append((f"{path.stem}:{number}", text))
        else:
            skip(f"{path}:{number}: needs a JSON object with a 'text' string")
    if not documents:
        raise app.UsageError(nothing_to_evaluate(path, len(skipped)))
    return documents


def tokenized_documents(tokenizer, files: Sequence[Path], length: int) -> list[tuple[str, list]]:
    """(id, first `length` token ids) of each document that has that many; some is required
    (app.UsageError), and the shorter ones are reported on stderr."""
    documents, short = [], 0
    for doc_id, text in read_documents(files):
        ids = tokenizer.encode(text)
        if len(ids) < length:
            short += 1
        else:
            documents.append((doc_id, ids[:length]))
    if not documents:
        raise app.UsageError(
            f"--data: nothing to evaluate: every document ({short}) is shorter than "
            f"--max_length={length} tokens"
        )
    if short:
        print(f"skipping {short} document(s) shorter than --max_length={length}", file=sys.stderr)
    return documents


# the cache donated: XLA writes each chunk's slots where it lies (one cache held, not two)
@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _chunk_nll(graphdef, state, inputs_BP, targets_BP, cache):
    model = nnx.merge(graphdef, state)
    new_B = jnp.full(inputs_BP.shape[:1], inputs_BP.shape[1], jnp.int32)
    logits, cache = cached.cached_logits(
        model, inputs_BP, cache, new_B, all_logits=True, decoding=False
    )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, targets_BP[..., None], axis=-1)[..., 0], cache


def token_nll(model, ids_BT: np.ndarray, settings: Settings, chunk: int, on_chunk=None):
    """Next-token loss [B, T-1] of each row, fed through the decode cache `chunk` tokens at a
    time: memory stays constant in swa/ahn mode whatever the document length. `on_chunk(done,
    total)` sees the positions scored after each chunk."""
    window, sinks = settings.window, settings.sinks
    if settings.mode == "full":
        window, sinks = ids_BT.shape[1], 0
    # layers kept as full attention (the reference's fa_layer_ids) hold every position
    cache = model.init_cache(
        ids_BT.shape[0], window=window, sinks=sinks, mode=settings.mode,
        max_length=ids_BT.shape[1],
    )  # fmt: skip
    graphdef, state = nnx.split(model)
    pieces = []
    for start in range(0, ids_BT.shape[1] - 1, chunk):
        stop = min(start + chunk, ids_BT.shape[1] - 1)
        nll, cache = _chunk_nll(
            graphdef, state, ids_BT[:, start:stop], ids_BT[:, start + 1 : stop + 1], cache
        )
        pieces.append(np.asarray(nll))
        if on_chunk is not None:
            on_chunk(stop, ids_BT.shape[1] - 1)
    return np.concatenate(pieces, axis=1), cache.nbytes()


def run_perplexity(model, documents, settings: Settings, out: Path, *, batch_size: int, chunk: int):
    """Score the `documents` (`tokenized_documents`, cut to a --limit by the caller, as
    `run_generation`'s prompts) not yet scored in `out`, appending each batch's records."""
    length, bucket = settings.max_length, settings.extra["bucket"]
    done = scored_ids(out, (d[0] for d in documents))
    todo = [d for d in documents if d[0] not in done]
    n_buckets = -(-(length - 1) // bucket)
    # the bar counts this command's documents, those scored before included (as generation's)
    with tqdm(total=len(documents), initial=len(documents) - len(todo), desc="perplexity") as bar:
        documents = todo
        progress = BatchProgress(bar, "scored")
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            ids = np.asarray([ids for _, ids in batch], np.int32)
            nll, cache_bytes = token_nll(model, ids, settings, chunk, progress.fed)
            results = []
            for (doc_id, _), row in zip(batch, nll, strict=True):
                # the loss at index i predicts token i + 1: bucket by the predicted position
                positions = np.arange(1, length)
                which = (positions // bucket).clip(max=n_buckets - 1)
                sums = np.bincount(which, weights=row, minlength=n_buckets)
                counts = np.bincount(which, minlength=n_buckets)
                results.append(
                    dict(
                        id=doc_id,
                        dataset="perplexity",
                        tokens=length,
                        bucket_nll=(sums / np.maximum(counts, 1)).tolist(),
                        bucket_tokens=counts.tolist(),
                        score=float(row.mean()),
                        cache_bytes=cache_bytes,
                        batch_size=len(batch),
                    )
                )
            append_results(out, results)
            progress.written()
            bar.update(len(batch))
