"""`python -m ahn_jax.generate`: Generation with the constant-size cache (ahn_jax/inference/).

  python -m ahn_jax.generate --model DIR [--ahn DIR] (--prompt TEXT | --prompt_file F | --jsonl F)
      [--max_new_tokens 128] [--mode ahn|swa|full] [--window 32640] [--sinks 128]
      [--temperature 0] [--top_p 1] [--chat] [--batch_size 8] [--out F.jsonl]

The flags are read here; the work is done by ahn_jax/inference/generate.py's functions.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from absl import app, flags

from ahn_jax import xla_cpu
from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import MODES
from ahn_jax.inference import generate as generate_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags: defined when this module is the entry point, so that importing it defines
    nothing."""
    flags.DEFINE_string("model", None, "base model: HF directory or ahn_jax checkpoint")
    flags.DEFINE_string("ahn", None, "AHN-only weights directory (reference layout)")
    flags.DEFINE_string("prompt", None, "prompt text")
    flags.DEFINE_string("prompt_file", None, "file whose whole text is the prompt")
    flags.DEFINE_string("jsonl", None, 'JSONL of {"prompt": ...} or {"messages": [...]}')
    flags.DEFINE_string("out", None, "JSONL output for --jsonl (default: stdout)")
    flags.DEFINE_integer("max_new_tokens", 128, "tokens to generate per prompt")
    flags.DEFINE_enum("mode", None, MODES, "default: ahn if AHN weights, else full")
    flags.DEFINE_integer("window", 32640, "sliding window W (sinks excluded)")
    flags.DEFINE_integer("sinks", 128, "attention sinks S")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy")
    flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (with temperature > 0)")
    flags.DEFINE_integer("seed", 0, "sampling seed")
    flags.DEFINE_bool("chat", False, "wrap prompts in the Qwen2.5 chat template")
    flags.DEFINE_integer("batch_size", 8, "prompts per batch (--jsonl)")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter dtype")


def main(argv) -> None:
    del argv
    sources = [x for x in (FLAGS.prompt, FLAGS.prompt_file, FLAGS.jsonl) if x is not None]
    if FLAGS.model is None or len(sources) != 1:
        raise app.UsageError("give --model and exactly one of --prompt, --prompt_file, --jsonl")
    model = from_pretrained(FLAGS.model, ahn_path=FLAGS.ahn, dtype=jnp.dtype(FLAGS.dtype))
    mode = FLAGS.mode or ("ahn" if model.config.ahn_type else "full")
    tokenizer = generate_lib.load_tokenizer(FLAGS.model, model.config.vocab_size)
    settings = dict(
        max_new_tokens=FLAGS.max_new_tokens,
        mode=mode,
        window=FLAGS.window,
        sinks=FLAGS.sinks,
        temperature=FLAGS.temperature,
        top_p=FLAGS.top_p,
        seed=FLAGS.seed,
        stop_ids=generate_lib.stop_ids(tokenizer),
    )
    if FLAGS.jsonl is None:
        text = FLAGS.prompt if FLAGS.prompt is not None else Path(FLAGS.prompt_file).read_text()
        generate_lib.stream_completion(model, tokenizer, text, chat=FLAGS.chat, **settings)
        return
    lines = generate_lib.complete_jsonl(
        model, tokenizer, FLAGS.jsonl, chat=FLAGS.chat, batch_size=FLAGS.batch_size, **settings
    )
    if FLAGS.out:
        Path(FLAGS.out).write_text("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    define_flags()
    app.run(main)
