"""Generation: the sampler, greedy decoding against the parallel forward, and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from shared import save_tiny_qwen2, tiny_config, write_qwen25_tokenizer

from ahn_jax.inference import generate as generate_lib
from ahn_jax.model.transformer import init_model

ROOT = Path(__file__).parents[2]


def test_sampler_greedy_and_nucleus():
    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]))
    keys = jax.random.split(jax.random.key(0), 300)
    draw = jax.jit(jax.vmap(generate_lib.sample_token, in_axes=(None, 0, None, None)))
    assert draw(logits, keys, 0.0, 1.0).tolist() == [[0, 2]] * 300  # temperature 0: greedy
    assert np.all(np.asarray(draw(logits, keys, 1.0, 0.5)) == [0, 2])  # nucleus of one token
    nucleus = np.asarray(draw(logits, keys, 1.0, 0.85))  # row 0: {0, 1}; row 1: {2, 1}
    assert set(nucleus[:, 0]) == {0, 1} and set(nucleus[:, 1]) == {1, 2}
    full = np.asarray(draw(logits, keys, 1.0, 1.0))[:, 0]
    assert set(full) == {0, 1, 2}
    assert abs(np.mean(full == 0) - 0.6) < 0.1


def test_greedy_generation_follows_the_parallel_forward():
    model = init_model(tiny_config(ahn_type="gdn"), seed=1, ahn_output_init="normal")
    prompts = np.random.default_rng(0).integers(0, 64, (2, 6)).tolist()
    new = generate_lib.generate(model, prompts, max_new_tokens=12, mode="ahn", window=4, sinks=2)
    sequences = jnp.asarray([p + n for p, n in zip(prompts, new, strict=True)])
    assert sequences.shape == (2, 18)
    logits = model(sequences, mode="ahn", window=4, sinks=2)
    # each generated token is the parallel forward's argmax, up to the rounding by which the decode
    # program and the parallel one differ (a near-tie may flip on another CPU)
    chosen = jnp.take_along_axis(logits[:, 5:-1], sequences[:, 6:, None], axis=-1)[..., 0]
    assert float(jnp.max(jnp.max(logits[:, 5:-1], axis=-1) - chosen)) <= 1e-5


def test_cli_streams_a_prompt_and_batches_jsonl(tmp_path):
    model_dir = tmp_path / "model"
    save_tiny_qwen2(model_dir, vocab_size=151936, hidden_size=32, intermediate_size=48)
    write_qwen25_tokenizer(model_dir)
    base = [sys.executable, "-m", "ahn_jax.generate", f"--model={model_dir}", "--window=8",
            "--sinks=2", "--max_new_tokens=5"]  # fmt: skip

    def run(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, cwd=ROOT)

    single = run("--prompt=To be, or not to be", "--mode=swa")
    assert single.returncode == 0, single.stderr
    assert single.stdout.strip()
    prompts = tmp_path / "prompts.jsonl"
    records = [
        {"prompt": "To be, or not to be"},
        {"prompt": "Hello"},
        {"messages": [{"role": "user", "content": "Hi there"}]},
        {"prompt": "To be, or not to be"},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "out.jsonl"
    batched = run(f"--jsonl={prompts}", f"--out={out}", "--mode=swa")
    assert batched.returncode == 0, batched.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("prompt") for r in results] == [r.get("prompt") for r in records]
    assert results[0]["completion"] == results[3]["completion"]  # greedy, same prompt
    assert results[0]["completion"] == single.stdout.rstrip("\n")
    prompts.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    bad = run(f"--jsonl={prompts}")
    assert bad.returncode != 0 and "prompts.jsonl:2" in bad.stderr
