"""Generation tasks (LV-Eval, InfiniteBench, LongBench, pass-key retrieval, RULER's NIAH variants):
prompts as the reference evaluation (or RULER) builds them, batched greedy decoding, scoring,
results appended to disk."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from absl import app
from tqdm import tqdm

from ahn_jax.evaluation import passkey, ruler, tasks
from ahn_jax.evaluation.batch_progress import BatchProgress
from ahn_jax.evaluation.metrics import passkey_exact_match, string_match_all
from ahn_jax.evaluation.results import (
    Settings,
    UnknownKindError,
    append_results,
    nothing_to_evaluate,
    scored_ids,
    sort_results,
    task_kind,
)
from ahn_jax.inference import generate as generate_lib
from ahn_jax.model.layerwise import for_decoding


@dataclasses.dataclass
class Prompt:
    """One generation job: token ids and what scoring needs."""

    id: str
    ids: list[int]
    max_new: int
    record: dict  # copied into the result (dataset, answers, lengths, ...)


def benchmark_prompts(benchmark, files, tokenizer, settings: Settings, dataset) -> list[Prompt]:
    """The prompts of every file's samples; a file none of whose lines gives one is an error
    (app.UsageError): a benchmark scored without it would report a partial average as whole."""
    prompts = []
    for path in files:
        samples, problems = tasks.read_samples(benchmark, path, dataset)
        for problem in _grouped(problems):
            print(f"skipping {problem}", file=sys.stderr)
        if not samples:
            raise app.UsageError(nothing_to_evaluate(path, len(problems)))
        for sample in samples:
            spec = benchmark.datasets[sample.dataset]
            max_new = settings.max_new_tokens or spec.max_gen
            try:
                text, truncated = tasks.truncate_prompt(
                    tokenizer, sample.prompt, benchmark, settings.max_length, max_new
                )
            except ValueError as error:  # a --max_length that leaves no prompt
                raise app.UsageError(f"{sample.dataset}: {error}") from None
            ids = tasks.prompt_ids(tokenizer, text, settings.chat and spec.chat)
            record = dict(
                dataset=sample.dataset,
                answers=sample.answers,
                keywords=sample.keywords,
                length=sample.length,
                truncated=truncated,
            )
            if sample.level:
                record["level"] = sample.level
            prompts.append(Prompt(sample.id, ids, max_new, record))
    return prompts


def _grouped(problems: list[str]) -> list[str]:
    """ "path:line: why" messages, one per reason: the first line of each, with how many more
    lines had it (a file named after no dataset gave the same long line for every record)."""
    first, counts = {}, {}
    for problem in problems:
        why = problem.split(": ", 1)[-1]
        first.setdefault(why, problem)
        counts[why] = counts.get(why, 0) + 1
    more = {
        why: f" (and {n - 1} more line{'s' if n > 2 else ''} alike)" for why, n in counts.items()
    }
    return [problem + (more[why] if counts[why] > 1 else "") for why, problem in first.items()]


def passkey_prompts(tokenizer, settings: Settings) -> list[Prompt]:
    extra = settings.extra
    samples = passkey.passkey_samples(
        tokenizer, extra["lengths"], extra["depths"], extra["samples"], extra["seed"],
        chat=settings.chat,
    )  # fmt: skip
    return [
        Prompt(
            s.id,
            s.ids,
            settings.max_new_tokens or 10,
            dict(dataset="passkey", answers=[s.passkey], context_length=s.length, depth=s.depth),
        )
        for s in samples
    ]


def ruler_prompts(tokenizer, settings: Settings) -> list[Prompt]:
    """The NIAH variant's grid of prompts; the needle settings are in `settings.extra`."""
    extra = settings.extra
    config = ruler.NiahConfig(
        **{f.name: extra[f.name] for f in dataclasses.fields(ruler.NiahConfig)}
    )
    samples = ruler.niah_samples(
        tokenizer, config, extra["lengths"], extra["depths"], extra["samples"], extra["seed"],
        task=settings.task, chat=settings.chat,
    )  # fmt: skip
    max_new = settings.max_new_tokens or ruler.MAX_NEW_TOKENS
    return [
        Prompt(s.id, s.ids, max_new, dict(dataset=settings.task, answers=list(s.answers),
               queries=list(s.queries), context_length=s.length, depth=s.depth))
        for s in samples
    ]  # fmt: skip


def score_prediction(task: str, record: dict, prediction: str) -> float:
    kind = task_kind(task)
    if kind == "passkey":
        return passkey_exact_match(prediction, record["answers"][0])
    if kind == "niah":
        return string_match_all(prediction, record["answers"])
    if kind == "benchmark":
        benchmark = tasks.BENCHMARKS[task]
        return tasks.score(
            benchmark, record["dataset"], prediction, record["answers"], record.get("keywords")
        )
    raise UnknownKindError(task, "score")


def run_generation(
    model,
    tokenizer,
    prompts: list[Prompt],
    settings: Settings,
    out: Path,
    batch_size: int,
    stop_ids=None,
    chunk: int = 1024,
):
    """Decode the prompts not yet scored in `out`, appending results as each batch finishes;
    batches are ragged (`generate`), of prompts sorted by length so that little is padding, and
    prefilled `chunk` tokens at a time. At the end predictions.jsonl holds the records in the
    prompts' order. Decoding is greedy with `settings.repetition_penalty`, stopping at `stop_ids`
    (default: the tokenizer's end tokens)."""
    done = scored_ids(out, (p.id for p in prompts))
    todo = sorted((p for p in prompts if p.id not in done), key=lambda p: len(p.ids))
    stops = generate_lib.stop_ids(tokenizer) if stop_ids is None else stop_ids
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=settings.task)
    progress = BatchProgress(bar)
    # the per-layer copy `generate` decodes with, made once for every batch (on the CPU)
    model = for_decoding(model)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        progress.start(max(p.max_new for p in batch))
        caches: list = []
        outputs = generate_lib.generate(
            model,
            [p.ids for p in batch],
            max_new_tokens=[p.max_new for p in batch],
            mode=settings.mode,
            window=settings.window,
            sinks=settings.sinks,
            stop_ids=stops,
            on_cache=caches.append,
            on_prefill=progress.fed,
            on_tokens=progress.decoded,
            decode=settings.decode,
            repetition_penalty=settings.repetition_penalty,
            chunk_size=chunk,
        )
        # every cache array is per row; a full cache holds the batch's longest prompt + budget,
        # rounded up by `generate` (its window), the positions its bytes are for
        longest = max(len(p.ids) + p.max_new for p in batch)
        held = caches[0].window if settings.mode == "full" else longest
        cache = dict(cache_bytes=caches[0].nbytes() // len(batch), batch_size=len(batch),
                     cache_tokens=held)  # fmt: skip
        append_results(out, [_scored(p, new, settings, tokenizer, cache)
                             for p, new in zip(batch, outputs, strict=True)])  # fmt: skip
        progress.written()
        bar.update(len(batch))
    bar.close()
    sort_results(out, [p.id for p in prompts])


def _scored(prompt: Prompt, new, settings: Settings, tokenizer, cache: dict) -> dict:
    prediction = tokenizer.decode(new, skip_special_tokens=True)
    return dict(
        id=prompt.id,
        **prompt.record,
        pred=prediction,
        score=score_prediction(settings.task, prompt.record, prediction),
        prompt_tokens=len(prompt.ids),
        generated_tokens=len(new),
        max_new_tokens=prompt.max_new,
        **cache,
    )
