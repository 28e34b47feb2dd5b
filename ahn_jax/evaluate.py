"""Long-context evaluation: LV-Eval, InfiniteBench, LongBench, pass-key retrieval, perplexity.

  python -m ahn_jax.evaluate --model DIR [--ahn DIR] --task lveval|infinitebench|longbench \\
      --data FILE_OR_DIR [--mode full|swa|ahn] [--window W --sinks S] [--max_length N] --out DIR
  python -m ahn_jax.evaluate --model DIR --task passkey --lengths 4096,8192 --depths 0,0.5,1 \\
      --out DIR
  python -m ahn_jax.evaluate --model DIR --task perplexity --data pg19.jsonl --max_length 32768 \\
      --bucket 2048 --out DIR

Benchmarks run as the reference evaluation runs them (ahn_jax/evaluation/tasks.py): its prompts,
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
import sys
from pathlib import Path

import jax.numpy as jnp
from absl import app, flags

from ahn_jax import xla_cpu
from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import MODES
from ahn_jax.evaluation import report, tasks
from ahn_jax.evaluation.perplexity import run_perplexity
from ahn_jax.evaluation.results import TASKS, check_settings, data_files, read_results
from ahn_jax.evaluation.runner import benchmark_prompts, passkey_prompts, run_generation
from ahn_jax.evaluation.settings import resolve_settings
from ahn_jax.inference import generate as generate_lib

FLAGS = flags.FLAGS
# the flags `resolve_settings` takes, as keyword arguments of their names
SETTING_FLAGS = ("model", "ahn", "mode", "window", "sinks", "max_length", "max_new_tokens",
                 "chat", "model_name", "dtype", "lengths", "depths", "samples", "seed",
                 "bucket")  # fmt: skip


def define_flags() -> None:
    flags.DEFINE_string("model", None, "base model: HF directory or ahn_jax checkpoint")
    flags.DEFINE_string("ahn", None, "AHN-only weights directory (reference layout)")
    flags.DEFINE_enum("task", None, TASKS, "what to evaluate")
    flags.DEFINE_list("data", [], "JSONL file(s) or directories of them (all tasks but passkey)")
    flags.DEFINE_string("dataset", None, "dataset name for every file (default: record or file)")
    flags.DEFINE_enum("mode", None, MODES, "default: ahn with AHN weights, else full")
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


def main(argv) -> None:
    del argv
    for name in ("model", "task", "out"):
        if getattr(FLAGS, name) is None:
            raise app.UsageError(f"--{name} is required")
    model = from_pretrained(FLAGS.model, ahn_path=FLAGS.ahn, dtype=jnp.dtype(FLAGS.dtype))
    tokenizer = generate_lib.load_tokenizer(FLAGS.model, model.config.vocab_size)
    settings = resolve_settings(
        model.config, FLAGS.task, **{name: FLAGS[name].value for name in SETTING_FLAGS}
    )
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
            benchmark = tasks.BENCHMARKS[FLAGS.task]
            prompts = benchmark_prompts(benchmark, files, tokenizer, settings, FLAGS.dataset)
        prompts = prompts[: FLAGS.limit] if FLAGS.limit is not None else prompts
        run_generation(model, tokenizer, prompts, settings, out, FLAGS.batch_size)
    summary = report.write_report(
        out, dataclasses.asdict(settings), read_results(out), model.config
    )
    print(report.markdown_table(summary))


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    define_flags()
    app.run(main)
