"""Long-context evaluation: LV-Eval, InfiniteBench, LongBench, pass-key retrieval, RULER's NIAH
variants, perplexity.

  python -m ahn_jax.evaluate --model DIR [--ahn DIR] --task lveval|infinitebench|longbench \\
      --data FILE_OR_DIR [--mode full|swa|ahn] [--window W --sinks S] [--max_length N] --out DIR
  python -m ahn_jax.evaluate --model DIR --task passkey --lengths 4096,8192 --depths 0,0.5,1 \\
      --out DIR
  python -m ahn_jax.evaluate --model DIR --ahn DIR --task niah_multikey|niah_multivalue|\\
      niah_multiquery --lengths 8192,32768 --depths 0,0.5,1 --window 4096 --out DIR
  python -m ahn_jax.evaluate --model DIR --task perplexity --data pg19.jsonl --max_length 32768 \\
      --bucket 2048 --out DIR

Benchmarks run as the reference evaluation runs them (ahn_jax/evaluation/tasks.py): its prompts,
truncation (LV-Eval: middle; LongBench and InfiniteBench: keep the last max_length - max_gen
tokens), Qwen chat template when the model name contains "qwen2" (--chat=auto), greedy decoding
until an end token or the dataset's generation budget, and its metrics. Window, sinks and
max_length default to the reference's values for the benchmark; for pass keys, NIAH and
perplexity, window and sinks default to those the AHN weights' config.json records (of --ahn, or
of a merged --model or an Orbax checkpoint converted from one). The line printed at start says
where each came from.

`--out` receives predictions.jsonl (one scored record per sample, appended as each batch
finishes), summary.json and summary.md, and PNG plots. A rerun with the same --out skips samples
already scored there (the settings must match those in run.json, but for a pass-key or NIAH grid's
shape and data files added or left out; the summary covers this command's samples, so a --limit
rerun summarizes those). Malformed input lines are
reported with their line numbers and skipped; a data file with no usable line is an error.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp
from absl import app, flags

from ahn_jax import cli, xla_cpu
from ahn_jax.checkpoints.pretrained import LOAD_ERRORS, from_pretrained
from ahn_jax.checkpoints.recorded import recorded_attention
from ahn_jax.cli import default_dtype, define_kernels_flag
from ahn_jax.config import KERNELS, MODES
from ahn_jax.evaluation import report, ruler, tasks
from ahn_jax.evaluation.perplexity import run_perplexity, tokenized_documents
from ahn_jax.evaluation.results import (
    GRID_TASKS,
    TASKS,
    UnknownKindError,
    check_settings,
    data_files,
    data_record,
    read_results,
    task_kind,
)
from ahn_jax.evaluation.runner import (
    benchmark_prompts,
    passkey_prompts,
    ruler_prompts,
    run_generation,
)
from ahn_jax.evaluation.settings import chat_follows_model_name, resolve_settings, window_and_sinks
from ahn_jax.inference import completions, run_mode
from ahn_jax.inference import generate as generate_lib
from ahn_jax.inference.generation_config import read_generation_config
from ahn_jax.model.cache import DECODES

FLAGS = flags.FLAGS
# the flags `resolve_settings` takes, as keyword arguments of their names
SETTING_FLAGS = ("model", "ahn", "mode", "window", "sinks", "max_length", "max_new_tokens",
                 "chat", "model_name", "dtype", "lengths", "depths", "samples", "seed",
                 "bucket", "decode", "repetition_penalty", "niah_keys", "niah_values",
                 "niah_queries", "niah_key_type", "niah_value_type", "niah_haystack")  # fmt: skip


def define_flags() -> None:
    flags.DEFINE_string("model", None, "base model: HF directory or ahn_jax checkpoint")
    flags.DEFINE_string("ahn", None, "AHN-only weights directory (reference layout)")
    define_kernels_flag(KERNELS)
    flags.DEFINE_enum("task", None, TASKS, "what to evaluate")
    flags.DEFINE_list("data", [], "JSONL files or directories (perplexity: .txt books too)")
    flags.DEFINE_string("dataset", None, "dataset name for every file (default: record or file)")
    flags.DEFINE_enum("mode", None, MODES, "default: ahn with AHN weights, else full")
    flags.DEFINE_integer("window", None, "sliding window W (default: the benchmark's reference, "
                         "else the AHN config's)", lower_bound=1)  # fmt: skip
    flags.DEFINE_integer("sinks", None, "attention sinks S (default: the benchmark's reference, "
                         "else the AHN config's, else 0)", lower_bound=0)  # fmt: skip
    flags.DEFINE_integer(
        "max_length",
        None,
        "prompt budget in tokens, cut before the chat template is added, as the benchmarks' "
        "scripts do (perplexity: doc tokens)",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "max_new_tokens", None, "override each dataset's generation budget", lower_bound=1
    )
    flags.DEFINE_enum("chat", "auto", ["auto", "on", "off"], 'auto: iff "qwen2" in model_name')
    flags.DEFINE_string("model_name", None, "name the chat rule looks at (default: --model's)")
    flags.DEFINE_integer(
        "batch_size", 8, "prompts decoded together (ragged, sorted by length)", lower_bound=1
    )
    flags.DEFINE_list("lengths", ["1024", "2048", "4096"], "passkey/niah prompt lengths (tokens)")
    flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "passkey/niah needle depths")
    flags.DEFINE_integer("samples", 5, "passkey/niah prompts per (length, depth)", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "passkey/niah seed")
    flags.DEFINE_integer(
        "niah_keys", None, "keys with needles (RULER: multikey 4, multiquery 4)", lower_bound=1
    )
    flags.DEFINE_integer(
        "niah_values", None, "values per key (RULER: multivalue 4, else 1)", lower_bound=1
    )
    flags.DEFINE_integer(
        "niah_queries", None, "keys asked for (RULER: multiquery 4, else 1)", lower_bound=1
    )
    flags.DEFINE_enum("niah_key_type", None, ruler.NEEDLE_TYPES, "NIAH keys (default words)")
    flags.DEFINE_enum("niah_value_type", None, ruler.NEEDLE_TYPES, "NIAH values (default numbers)")
    flags.DEFINE_enum(
        "niah_haystack", None, ruler.HAYSTACKS, "noise sentences (default) or needles"
    )
    flags.DEFINE_integer(
        "bucket", None, "perplexity position bucket (default: max_length / 16)", lower_bound=1
    )
    flags.DEFINE_integer(
        "chunk", 1024, "tokens per prefill call (bounds activation memory)", lower_bound=1
    )
    flags.DEFINE_integer(
        "limit", None, "evaluate at most this many samples (a smoke test)", lower_bound=1
    )
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "default: bf16 on TPU/GPU, else f32")
    flags.DEFINE_enum("decode", "exact", DECODES, "decode-step masking (ahn_jax/model/cache.py)")
    flags.DEFINE_float("repetition_penalty", None,
                       "default: generation_config.json's (as HF generate), else 1")  # fmt: skip
    flags.DEFINE_string("out", None, "output directory (resumes what is already there)")


# The flags only some tasks read: given to another task they were ignored (and some recorded in
# run.json as if they had counted)
_BENCHMARKS = tuple(tasks.BENCHMARKS)
TASK_FLAGS = {
    **dict.fromkeys(("lengths", "depths", "samples", "seed"), GRID_TASKS),
    **dict.fromkeys(
        [f"niah_{x}" for x in ("keys", "values", "queries", "key_type", "value_type", "haystack")],
        ruler.VARIANTS,
    ),  # fmt: skip
    "bucket": ("perplexity",),
    "max_length": (*_BENCHMARKS, "perplexity"),
    "dataset": _BENCHMARKS,
    "max_new_tokens": (*_BENCHMARKS, *GRID_TASKS),
}


def _check_task_flags(task: str) -> None:
    for name, readers in TASK_FLAGS.items():
        if FLAGS[name].present and task not in readers:
            raise app.UsageError(
                f"--{name} is not read by --task {task} (only by {', '.join(readers)})"
            )


def main(argv) -> None:
    del argv
    for name in ("model", "task", "out"):
        if getattr(FLAGS, name) is None:
            raise app.UsageError(f"--{name} is required")
    if FLAGS.task in GRID_TASKS and FLAGS.data:
        raise app.UsageError(f"--data is not read by --task {FLAGS.task}: its prompts are "
                             "generated (--lengths, --depths, --samples)")  # fmt: skip
    _check_task_flags(FLAGS.task)
    cli.check_directories(model=FLAGS.model, ahn=FLAGS.ahn)
    if FLAGS.mode == "full":  # before the model loads (the default mode is known only after)
        run_mode.check_no_window_for_full(FLAGS.window, FLAGS.sinks)
    dtype = FLAGS.dtype or default_dtype()
    model = from_pretrained(
        FLAGS.model, ahn_path=FLAGS.ahn, dtype=jnp.dtype(dtype), kernels=FLAGS.kernels
    )
    tokenizer = generate_lib.load_tokenizer(FLAGS.model, model.config.vocab_size)
    values = {name: FLAGS[name].value for name in SETTING_FLAGS}
    recorded = recorded_attention(FLAGS.model, FLAGS.ahn)
    values |= {"dtype": dtype, "recorded": recorded}
    settings = resolve_settings(model.config, FLAGS.task, **values)
    if settings.chat:
        completions.check_chat(tokenizer, "--chat")
    out = Path(FLAGS.out)
    suffixes = (".jsonl", ".txt") if FLAGS.task == "perplexity" else (".jsonl",)
    files = data_files(FLAGS.data, suffixes) if FLAGS.task not in GRID_TASKS else []
    if files:
        settings = dataclasses.replace(settings, data=data_record(files, FLAGS.dataset))
    # built before run.json is written, so that inputs refused here can be rerun changed
    if FLAGS.task == "perplexity":
        documents = tokenized_documents(tokenizer, files, settings.max_length)[: FLAGS.limit]
        ids = {doc_id for doc_id, _ in documents}
    else:
        prompts = _prompts(tokenizer, settings, files)[: FLAGS.limit]
        ids = {prompt.id for prompt in prompts}
    check_settings(out, settings)
    _announce(settings, recorded)
    if FLAGS.task == "perplexity":
        run_perplexity(model, documents, settings, out, batch_size=FLAGS.batch_size,
                       chunk=FLAGS.chunk)  # fmt: skip
    else:
        # the eos ids of generation_config.json (else config.json's), as HF `generate` stops;
        # else the tokenizer's end tokens
        stops = read_generation_config(FLAGS.model).stop_ids(generate_lib.stop_ids(tokenizer))
        _note_prompts_inside_the_window(settings, prompts)
        run_generation(model, tokenizer, prompts, settings, out, FLAGS.batch_size, stops,
                       chunk=FLAGS.chunk)  # fmt: skip
    # this command's samples only: a resumed --out may hold more (an earlier run without --limit)
    records = [record for record in read_results(out) if record["id"] in ids]
    summary = report.write_report(out, dataclasses.asdict(settings), records, model.config)
    print(report.markdown_table(summary))


def _announce(settings, recorded) -> None:
    """The settings on stderr, with where the window and sinks came from."""
    _, attention = window_and_sinks(
        settings.task, settings.mode, FLAGS.window, FLAGS.sinks, recorded
    )
    chat = "on" if settings.chat else "off"
    if not settings.chat and FLAGS.chat == "auto" and chat_follows_model_name(settings.task):
        name = FLAGS.model_name or Path(FLAGS.model).resolve().name
        chat += (f" (--chat auto: {name!r} has no lower-case 'qwen2', the reference's rule; "
                 "--chat on applies the template)")  # fmt: skip
    print(f"{settings.task}: mode {settings.mode}, {attention}, chat template {chat}, "
          f"{settings.dtype}, decode {settings.decode}", file=sys.stderr)  # fmt: skip


def _note_prompts_inside_the_window(settings, prompts) -> None:
    """Tell (stderr) how many prompts, with their answers, fit in S + W: no token of theirs
    leaves the window, so their outputs are full attention's (expected for a benchmark's short
    samples; for all of them, the window chosen evicts nothing)."""
    held, window_sinks = settings.sinks + settings.window, (settings.window, settings.sinks)
    inside = sum(
        run_mode.window_unused(settings.mode, settings.decode,
                               run_mode.attended(len(p.ids), p.max_new), *window_sinks)
        for p in prompts
    )  # fmt: skip
    if inside:
        memory = "the AHN memory" if settings.mode == "ahn" else "the window"
        print(f"note: {inside} of {len(prompts)} prompts fit in S + W = {held} with their "
              f"answers: {memory} changes nothing for them (full attention's outputs)",
              file=sys.stderr)  # fmt: skip


def _prompts(tokenizer, settings, files):
    kind = task_kind(settings.task)
    try:
        if kind == "passkey":
            return passkey_prompts(tokenizer, settings)
        if kind == "niah":
            return ruler_prompts(tokenizer, settings)
    except ValueError as error:  # a grid the prompts cannot be built for; it names the flag
        raise app.UsageError(str(error)) from None
    if kind == "benchmark":
        benchmark = tasks.BENCHMARKS[settings.task]
        return benchmark_prompts(benchmark, files, tokenizer, settings, FLAGS.dataset)
    raise UnknownKindError(settings.task, "prompt builder")


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    define_flags()
    cli.run(
        main,
        LOAD_ERRORS,
        on_interrupt="interrupted; the same command resumes after the samples already written",
    )
