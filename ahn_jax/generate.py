"""`python -m ahn_jax.generate`: Generation with the constant-size cache (ahn_jax/inference/).

  python -m ahn_jax.generate --model DIR [--ahn DIR] (--prompt TEXT | --prompt_file F | --jsonl F)
      [--max_new_tokens N] [--mode ahn|swa|full] [--window W] [--sinks S]
      [--decode exact|reference] [--[no]do_sample] [--temperature T] [--top_k K] [--top_p P]
      [--repetition_penalty R] [--seed 0] [--chat] [--batch_size 8] [--out F.jsonl]
      [--dtype float32|bfloat16]

The token choice and the length are the model directory's generation_config.json, as
transformers' `generate` reads it, with the flags given over it (built-in defaults < file < flags;
greedy, no penalty and 128 new tokens where neither says otherwise). The stop ids are the file's
eos_token_id (without the file, config.json's, as transformers reads it), else the tokenizer's
<|im_end|> and <|endoftext|>. The window and sinks are the
flags', else those the AHN weights' config.json records (`sliding_window`, `num_attn_sinks`; of
--ahn, or of a merged --model or its Orbax conversion), else 32640 and 128; stderr says which.
The flags are read here; the work is done by ahn_jax/inference/generate.py's functions.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import jax.numpy as jnp
from absl import app, flags

from ahn_jax import cli, xla_cpu
from ahn_jax.checkpoints import recorded
from ahn_jax.checkpoints.ahn_weights import DEFAULT_SINKS, DEFAULT_WINDOW
from ahn_jax.checkpoints.pretrained import LOAD_ERRORS, from_pretrained
from ahn_jax.config import KERNELS, MODES
from ahn_jax.inference import completions, generation_config, run_mode
from ahn_jax.inference import generate as generate_lib
from ahn_jax.inference.partial_output import PartialOutput
from ahn_jax.model.cache import DECODES

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags: defined when this module is the entry point, so that importing it defines
    nothing."""
    flags.DEFINE_string("model", None, "base model: HF directory or ahn_jax checkpoint")
    flags.DEFINE_string("ahn", None, "AHN-only weights directory (reference layout)")
    cli.define_kernels_flag(KERNELS)
    flags.DEFINE_string("prompt", None, "prompt text")
    flags.DEFINE_string("prompt_file", None, "file whose whole text is the prompt")
    flags.DEFINE_string("jsonl", None, 'JSONL of {"prompt": ...} or {"messages": [...]}')
    flags.DEFINE_string("out", None, "JSONL output for --jsonl (default: stdout)")
    flags.DEFINE_integer(
        "max_new_tokens",
        None,
        "tokens to generate per prompt (default: the file's, else 128)",
        lower_bound=1,
    )
    flags.DEFINE_enum("mode", None, MODES, "default: ahn if AHN weights, else full")
    flags.DEFINE_integer(
        "window",
        None,
        "sliding window W, sinks excluded (default: the AHN config's, else 32640)",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "sinks", None, "attention sinks S (default: the AHN config's, else 128)", lower_bound=0
    )
    flags.DEFINE_enum("decode", "exact", DECODES, "exact, or the reference's decode bookkeeping")
    # None = not given: generation_config.json's value, else transformers' default
    flags.DEFINE_bool("do_sample", None, "sample (else greedy); default: the file's, else false")
    flags.DEFINE_float("temperature", None, "softmax temperature when sampling (default 1)")
    flags.DEFINE_integer(
        "top_k", None, "keep the k best tokens when sampling (default 50; 0 off)", lower_bound=0
    )
    flags.DEFINE_float("top_p", None, "nucleus mass when sampling (default 1: off)")
    flags.DEFINE_float(
        "repetition_penalty", None, "penalty of seen tokens, also greedy (default 1)"
    )
    flags.DEFINE_integer("seed", 0, "sampling seed")
    flags.DEFINE_bool("chat", False, "wrap prompts in the Qwen2.5 chat template")
    flags.DEFINE_integer("batch_size", 8, "prompts per batch (--jsonl)", lower_bound=1)
    flags.DEFINE_enum(
        "dtype",
        None,
        ["float32", "bfloat16"],
        "parameter dtype (default: bf16 on TPU/GPU, fp32 CPU)",
    )


OVERRIDE_FLAGS = (
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "max_new_tokens",
)


def generation_settings(model_dir: str) -> generation_config.GenerationSettings:
    """The model's generation_config.json with the flags given over it; bad values are usage
    errors naming the file's key or the flag."""
    try:
        settings = generation_config.read_generation_config(model_dir).merged(
            {name: FLAGS[name].value for name in OVERRIDE_FLAGS}
        )
        settings.sampling()  # checks the combination (a temperature of 0 when sampling, ...)
    except ValueError as error:
        # the library's names as this tool's flags ("set do_sample false": --nodo_sample)
        message = str(error).replace("set do_sample false", "give --nodo_sample")
        if FLAGS["do_sample"].present:
            message = message.replace("(do_sample)", "(--do_sample)")
        # the one combination `merged`'s field checks cannot see: a temperature of 0 when sampling
        if FLAGS["temperature"].present:
            message = re.sub(r"^temperature\b", "--temperature", message)
        raise app.UsageError(message) from error
    return settings


def window_and_sinks(mode: str) -> dict[str, int | None]:
    """--window and --sinks, else what the AHN weights' config.json records, else 32640 and 128;
    stderr says which. Mode full takes neither (given, a usage error)."""
    given = {name: FLAGS[name].value for name in recorded.NAMES}
    if mode == "full":
        run_mode.check_no_window_for_full(given["window"], given["sinks"])
        print("mode full", file=sys.stderr)
        return {"window": None, "sinks": 0}
    found = recorded.recorded_attention(FLAGS.model, FLAGS.ahn)
    defaults = {"window": DEFAULT_WINDOW, "sinks": DEFAULT_SINKS}
    chosen, note = recorded.window_and_sinks(given, found, defaults)
    print(f"mode {mode}: {note}", file=sys.stderr)
    return chosen


def main(argv) -> None:
    del argv
    sources = [x for x in (FLAGS.prompt, FLAGS.prompt_file, FLAGS.jsonl) if x is not None]
    if FLAGS.model is None or len(sources) != 1:
        raise app.UsageError("give --model and exactly one of --prompt, --prompt_file, --jsonl")
    cli.check_directories(model=FLAGS.model, ahn=FLAGS.ahn)
    cli.check_files(prompt_file=FLAGS.prompt_file, jsonl=FLAGS.jsonl)
    _check_jsonl_flags(FLAGS.out)
    text = FLAGS.prompt
    if FLAGS.prompt_file is not None:
        text = cli.utf8_text(FLAGS.prompt_file, "--prompt_file")
    if text == "":
        raise app.UsageError("the prompt is empty")
    if FLAGS.mode == "full":  # before the model loads (the default mode is known only after)
        run_mode.check_no_window_for_full(FLAGS.window, FLAGS.sinks)
    generation = generation_settings(FLAGS.model)
    dtype = jnp.dtype(FLAGS.dtype or cli.default_dtype())
    model = from_pretrained(FLAGS.model, ahn_path=FLAGS.ahn, dtype=dtype, kernels=FLAGS.kernels)
    mode = run_mode.resolve_mode(FLAGS.mode, model.config, FLAGS.model)
    run_mode.check_decode_flag(FLAGS.decode, mode)
    tokenizer = generate_lib.load_tokenizer(FLAGS.model, model.config.vocab_size)
    if FLAGS.chat:
        completions.check_chat(tokenizer)
    settings = dict(
        generation=generation,
        mode=mode,
        **window_and_sinks(mode),
        seed=FLAGS.seed,
        decode=FLAGS.decode,
        stop_ids=generation.stop_ids(generate_lib.stop_ids(tokenizer)),
    )
    if FLAGS.jsonl is None:
        completions.stream_completion(model, tokenizer, text, chat=FLAGS.chat, **settings)
        return
    # with --out, finished batches are kept in <out>.partial: an interrupted run resumes there
    partial = PartialOutput(FLAGS.out, _run_record(settings, dtype)) if FLAGS.out else None
    lines = completions.complete_jsonl(model, tokenizer, FLAGS.jsonl, chat=FLAGS.chat,
                                       batch_size=FLAGS.batch_size, partial=partial,
                                       **settings)  # fmt: skip
    if partial is not None:
        partial.finish(lines)
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))


def _run_record(settings: dict, dtype) -> dict:
    """What a JSONL run's completions depend on: a resumed run must have the same."""
    return {
        "prompts": cli.file_digest(FLAGS.jsonl),
        **{name: FLAGS[name].value for name in ("model", "ahn", "chat", "batch_size")},
        **{k: v for k, v in settings.items() if k != "generation"},
        "generation": dataclasses.asdict(settings["generation"]),
        "dtype": jnp.dtype(dtype).name,
    }


def _check_jsonl_flags(out: str | None) -> None:
    """--out and --batch_size go with --jsonl; --out checked before any work, as it is written
    once all prompts are done."""
    for name in ("out", "batch_size"):
        if FLAGS.jsonl is None and FLAGS[name].present:
            raise app.UsageError(f"--{name} goes with --jsonl (one prompt streams to stdout)")
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise app.UsageError(f"--out={out} is a directory; give the JSONL file to write")
    if not path.absolute().parent.is_dir():
        raise app.UsageError(f"--out={out}: its directory {path.absolute().parent} does not exist")


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    define_flags()
    cli.run(main, LOAD_ERRORS)
