"""Long-context evaluation: LV-Eval, InfiniteBench, LongBench, pass-key retrieval, perplexity.

  python -m ahn_jax.evaluate --model DIR [--ahn DIR] --task lveval|infinitebench|longbench \\
      --data FILE_OR_DIR [--mode full|swa|ahn] [--window W --sinks S] [--max_length N] --out DIR
  python -m ahn_jax.evaluate --model DIR --task passkey --lengths 4096,8192 --depths 0,0.5,1 \\
      --out DIR
  python -m ahn_jax.evaluate --model DIR --task perplexity --data pg19.jsonl --max_length 32768 \\
      --bucket 2048 --out DIR

Benchmarks run as the reference evaluation runs them (ahn_jax/eval_tasks.py): its prompts,
truncation (LV-Eval: middle; LongBench and InfiniteBench: keep the last max_length - max_gen
tokens), Qwen chat template when the model name contains "qwen2" (--chat=auto), greedy decoding
until an end token or the dataset's generation budget, and its metrics. Window, sinks and
max_length default to the reference's values for the benchmark.

`--out` receives predictions.jsonl (one scored record per sample, appended as each batch
finishes), summary.json and summary.md, and PNG plots. A rerun with the same --out skips samples
already scored there (the settings must match those in run.json). Malformed input lines are
reported with their line numbers and skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from tqdm import tqdm

from ahn_jax import eval_report, eval_tasks, passkey
from ahn_jax import generate as generate_lib
from ahn_jax import model as model_lib
from ahn_jax.eval_metrics import passkey_exact_match
from ahn_jax.loading import from_pretrained

TASKS = ("lveval", "infinitebench", "longbench", "passkey", "perplexity")
PREDICTIONS, RUN_SETTINGS = "predictions.jsonl", "run.json"
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, "base model: HF directory or ahn_jax checkpoint")
    flags.DEFINE_string("ahn", None, "AHN-only weights directory (reference layout)")
    flags.DEFINE_enum("task", None, TASKS, "what to evaluate")
    flags.DEFINE_list("data", [], "JSONL file(s) or directories of them (all tasks but passkey)")
    flags.DEFINE_string("dataset", None, "dataset name for every file (default: record or file)")
    flags.DEFINE_enum("mode", None, model_lib.MODES, "default: ahn with AHN weights, else full")
    flags.DEFINE_integer("window", None, "sliding window W (default: the benchmark's reference)")
    flags.DEFINE_integer("sinks", None, "attention sinks S (default: the benchmark's reference)")
    flags.DEFINE_integer("max_length", None, "prompt budget in tokens (perplexity: doc tokens)")
    flags.DEFINE_integer("max_new_tokens", None, "override each dataset's generation budget")
    flags.DEFINE_enum("chat", "auto", ["auto", "on", "off"], 'auto: iff "qwen2" in model_name')
    flags.DEFINE_string("model_name", None, "name the chat rule looks at (default: --model's)")
    flags.DEFINE_integer("batch_size", 8, "prompts decoded together (equal lengths only)")
    flags.DEFINE_list("lengths", ["1024", "2048", "4096"], "passkey prompt lengths in tokens")
    flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "passkey needle depths")
    flags.DEFINE_integer("samples", 5, "passkey prompts per (length, depth)")
    flags.DEFINE_integer("seed", 0, "passkey seed")
    flags.DEFINE_integer("bucket", None, "perplexity position bucket (default: max_length / 16)")
    flags.DEFINE_integer("chunk", 1024, "tokens per prefill call (bounds activation memory)")
    flags.DEFINE_integer("limit", None, "evaluate at most this many samples (a smoke test)")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter dtype")
    flags.DEFINE_string("out", None, "output directory (resumes what is already there)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What determines the scores: a resumed run must match them (they go to run.json)."""

    task: str
    model: str
    ahn: str | None
    mode: str
    window: int
    sinks: int
    max_length: int | None
    max_new_tokens: int | None
    chat: bool
    dtype: str
    extra: dict  # task-specific: passkey lengths/depths/samples/seed, perplexity bucket


# ---- results on disk -----------------------------------------------------------------------------


def check_settings(out: Path, settings: Settings) -> None:
    """Write run.json, or check that the run being resumed had the same settings."""
    path = out / RUN_SETTINGS
    current = json.loads(json.dumps(dataclasses.asdict(settings)))
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
        if changed:
            details = ", ".join(f"{k}: {before.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise app.UsageError(
                f"{out} holds a run with other settings ({details}); use another --out "
                "or remove that directory"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2) + "\n")


def read_results(out: Path) -> list[dict]:
    """Scored records already in `out`. A torn last line (a crash mid-write) is dropped."""
    path = out / PREDICTIONS
    if not path.exists():
        return []
    records, lines = [], path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise
            logging.warning("%s:%d: dropping a partly written record", path, number)
            path.write_text("".join(f"{x}\n" for x in lines[:-1]), encoding="utf-8")
    return records


def append_results(out: Path, records: Iterable[dict]) -> None:
    with open(out / PREDICTIONS, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---- inputs --------------------------------------------------------------------------------------


def data_files(paths: Sequence[str]) -> list[Path]:
    files = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise app.UsageError(f"--data {path}: the directory has no .jsonl files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise app.UsageError(f"--data {path}: no such file or directory")
    if not files:
        raise app.UsageError("--data is required for this task")
    return files


@dataclasses.dataclass
class Prompt:
    """One generation job: token ids and what scoring needs."""

    id: str
    ids: list[int]
    max_new: int
    record: dict  # copied into the result (dataset, answers, lengths, ...)


def benchmark_prompts(benchmark, files, tokenizer, settings: Settings, dataset) -> list[Prompt]:
    prompts = []
    for path in files:
        samples, problems = eval_tasks.read_samples(benchmark, path, dataset)
        for problem in problems:
            print(f"skipping {problem}", file=sys.stderr)
        for sample in samples:
            spec = benchmark.datasets[sample.dataset]
            max_new = settings.max_new_tokens or spec.max_gen
            text, truncated = eval_tasks.truncate_prompt(
                tokenizer, sample.prompt, benchmark, settings.max_length, max_new
            )
            ids = eval_tasks.prompt_ids(tokenizer, text, settings.chat and spec.chat)
            record = dict(
                dataset=sample.dataset,
                answers=sample.answers,
                keywords=sample.keywords,
                length=sample.length,
                truncated=truncated,
            )
            prompts.append(Prompt(sample.id, ids, max_new, record))
    return prompts


def passkey_prompts(tokenizer, settings: Settings) -> list[Prompt]:
    extra = settings.extra
    samples = passkey.passkey_samples(
        tokenizer, extra["lengths"], extra["depths"], extra["samples"], extra["seed"]
    )
    return [
        Prompt(
            s.id,
            s.ids,
            settings.max_new_tokens or 10,
            dict(dataset="passkey", answers=[s.passkey], context_length=s.length, depth=s.depth),
        )
        for s in samples
    ]


# ---- generation tasks ----------------------------------------------------------------------------


def score_prediction(task: str, record: dict, prediction: str) -> float:
    if task == "passkey":
        return passkey_exact_match(prediction, record["answers"][0])
    benchmark = eval_tasks.BENCHMARKS[task]
    return eval_tasks.score(
        benchmark, record["dataset"], prediction, record["answers"], record.get("keywords")
    )


def run_generation(
    model, tokenizer, prompts: list[Prompt], settings: Settings, out: Path, batch_size: int
):
    """Decode the prompts not yet scored in `out`, in batches of equal length, appending results."""
    done = {r["id"] for r in read_results(out)}
    todo = [p for p in prompts if p.id not in done]
    groups: dict[tuple[int, int], list[Prompt]] = {}
    for prompt in todo:
        groups.setdefault((len(prompt.ids), prompt.max_new), []).append(prompt)
    stops = generate_lib.stop_ids(tokenizer)
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=settings.task)
    for (_, max_new), group in sorted(groups.items()):
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            caches: list = []
            outputs = generate_lib.generate(
                model,
                [p.ids for p in batch],
                max_new_tokens=max_new,
                mode=settings.mode,
                window=settings.window,
                sinks=settings.sinks,
                stop_ids=stops,
                on_cache=caches.append,
            )
            results = []
            for prompt, new in zip(batch, outputs, strict=True):
                prediction = tokenizer.decode(new, skip_special_tokens=True)
                results.append(
                    dict(
                        id=prompt.id,
                        **prompt.record,
                        pred=prediction,
                        score=score_prediction(settings.task, prompt.record, prediction),
                        prompt_tokens=len(prompt.ids),
                        generated_tokens=len(new),
                        max_new_tokens=max_new,
                        cache_bytes=caches[0].nbytes(),
                        batch_size=len(batch),
                    )
                )
            append_results(out, results)
            bar.update(len(batch))
    bar.close()


# ---- perplexity ----------------------------------------------------------------------------------


def read_documents(files: Sequence[Path]) -> list[tuple[str, str]]:
    """(id, text) per document: a .jsonl line's "text" field, or a whole non-JSONL file."""
    documents = []
    for path in files:
        if path.suffix != ".jsonl":
            documents.append((path.stem, path.read_text(encoding="utf-8")))
            continue
        for number, record, _ in eval_tasks.json_lines(path):
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                print(f"skipping {path}:{number}: needs a JSON object with a 'text' string",
                      file=sys.stderr)  # fmt: skip
                continue
            documents.append((f"{path.stem}:{number}", text))
    return documents


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _chunk_nll(graphdef, state, inputs_BP, targets_BP, cache):
    logits, cache = nnx.merge(graphdef, state).extend_logits(inputs_BP, cache, all_logits=True)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, targets_BP[..., None], axis=-1)[..., 0], cache


def token_nll(model, ids_BT: np.ndarray, settings: Settings, chunk: int):
    """Next-token loss [B, T-1] of each row, fed through the decode cache `chunk` tokens at a
    time: memory stays constant in swa/ahn mode whatever the document length."""
    window, sinks = settings.window, settings.sinks
    if settings.mode == "full":
        window, sinks = ids_BT.shape[1], 0
    cache = model.init_cache(ids_BT.shape[0], window=window, sinks=sinks, mode=settings.mode)
    graphdef, state = nnx.split(model)
    pieces = []
    for start in range(0, ids_BT.shape[1] - 1, chunk):
        stop = min(start + chunk, ids_BT.shape[1] - 1)
        nll, cache = _chunk_nll(
            graphdef, state, ids_BT[:, start:stop], ids_BT[:, start + 1 : stop + 1], cache
        )
        pieces.append(np.asarray(nll))
    return np.concatenate(pieces, axis=1), cache.nbytes()


def run_perplexity(
    model, tokenizer, files, settings: Settings, out: Path, *, batch_size: int, chunk: int, limit
):
    length, bucket = settings.max_length, settings.extra["bucket"]
    done = {r["id"] for r in read_results(out)}
    documents, short = [], 0
    for doc_id, text in read_documents(files):
        ids = tokenizer.encode(text)
        if len(ids) < length:
            short += 1
        elif doc_id not in done:
            documents.append((doc_id, ids[:length]))
    if short:
        print(f"skipping {short} document(s) shorter than --max_length={length}", file=sys.stderr)
    documents = documents[:limit] if limit is not None else documents
    n_buckets = -(-(length - 1) // bucket)
    with tqdm(total=len(documents), desc="perplexity") as bar:
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            nll, cache_bytes = token_nll(
                model, np.asarray([ids for _, ids in batch], np.int32), settings, chunk
            )
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
            bar.update(len(batch))


# ---- the command ---------------------------------------------------------------------------------


def resolve_settings(config, task: str) -> Settings:
    """Flags, with the benchmark's reference defaults filled in; errors name the flag."""
    mode = FLAGS.mode or ("ahn" if config.ahn_type else "full")
    if mode == "ahn" and not config.ahn_type:
        raise app.UsageError(
            f"--mode=ahn needs AHN weights: {FLAGS.model} has none; pass --ahn DIR "
            "(or evaluate --mode=swa / full)"
        )
    benchmark = eval_tasks.BENCHMARKS.get(task)
    window = FLAGS.window or (benchmark.window if benchmark else None)
    sinks = FLAGS.sinks if FLAGS.sinks is not None else (benchmark.sinks if benchmark else 0)
    if window is None:
        if mode != "full":
            raise app.UsageError(f"--task={task} --mode={mode} needs --window")
        window = 0
    max_length = FLAGS.max_length or (benchmark.max_length if benchmark else None)
    extra: dict = {}
    if task == "passkey":
        extra = dict(
            lengths=[int(x) for x in FLAGS.lengths],
            depths=[float(x) for x in FLAGS.depths],
            samples=FLAGS.samples,
            seed=FLAGS.seed,
        )
    if task == "perplexity":
        if max_length is None or max_length < 2:
            raise app.UsageError("--task=perplexity needs --max_length (tokens per document) >= 2")
        extra = dict(bucket=FLAGS.bucket or max(max_length // 16, 1))
    model_name = FLAGS.model_name or Path(FLAGS.model).resolve().name
    chat = task in eval_tasks.BENCHMARKS and eval_tasks.uses_chat(model_name, FLAGS.chat)
    chat = chat or (task == "passkey" and FLAGS.chat == "on")
    return Settings(
        task=task,
        model=str(Path(FLAGS.model).resolve()),
        ahn=str(Path(FLAGS.ahn).resolve()) if FLAGS.ahn else None,
        mode=mode,
        window=window,
        sinks=sinks,
        max_length=max_length,
        max_new_tokens=FLAGS.max_new_tokens,
        chat=chat,
        dtype=FLAGS.dtype,
        extra=extra,
    )


def main(argv) -> None:
    del argv
    for name in ("model", "task", "out"):
        if getattr(FLAGS, name) is None:
            raise app.UsageError(f"--{name} is required")
    model = from_pretrained(FLAGS.model, ahn_path=FLAGS.ahn, dtype=jnp.dtype(FLAGS.dtype))
    tokenizer = generate_lib.load_tokenizer(FLAGS.model, model.config.vocab_size)
    settings = resolve_settings(model.config, FLAGS.task)
    if settings.chat and not hasattr(tokenizer, "apply_chat_template"):
        raise app.UsageError(f"--chat: {FLAGS.model} has no chat tokenizer (use --chat=off)")
    out = Path(FLAGS.out)
    files = data_files(FLAGS.data) if FLAGS.task != "passkey" else []
    check_settings(out, settings)
    print(f"{settings.task}: mode {settings.mode}, window {settings.window}, sinks "
          f"{settings.sinks}, chat template {'on' if settings.chat else 'off'}",
          file=sys.stderr)  # fmt: skip
    if FLAGS.task == "perplexity":
        run_perplexity(
            model,
            tokenizer,
            files,
            settings,
            out,
            batch_size=FLAGS.batch_size,
            chunk=FLAGS.chunk,
            limit=FLAGS.limit,
        )
    else:
        if FLAGS.task == "passkey":
            prompts = passkey_prompts(tokenizer, settings)
        else:
            benchmark = eval_tasks.BENCHMARKS[FLAGS.task]
            prompts = benchmark_prompts(benchmark, files, tokenizer, settings, FLAGS.dataset)
        prompts = prompts[: FLAGS.limit] if FLAGS.limit is not None else prompts
        run_generation(model, tokenizer, prompts, settings, out, FLAGS.batch_size)
    summary = eval_report.write_report(
        out, dataclasses.asdict(settings), read_results(out), model.config
    )
    print(eval_report.markdown_table(summary))


if __name__ == "__main__":
    define_flags()
    app.run(main)
