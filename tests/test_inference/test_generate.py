"""Generation: greedy decoding against the parallel forward, and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared import save_tiny_qwen2, tiny_config, write_qwen25_tokenizer

from ahn_jax.inference import completions
from ahn_jax.inference import generate as generate_lib
from ahn_jax.model.transformer import init_model

ROOT = Path(__file__).parents[2]


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


def test_ragged_batch_generates_what_each_prompt_does_alone():
    model = init_model(tiny_config(ahn_type="gdn"), seed=1, ahn_output_init="normal")
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 64, n).tolist() for n in (3, 11, 7)]  # around S + W = 6
    budgets = [9, 5, 7]
    settings = dict(mode="ahn", window=4, sinks=2, repetition_penalty=1.3, stop_ids=[0])
    together = generate_lib.generate(model, prompts, max_new_tokens=budgets, **settings)
    for prompt, budget, new in zip(prompts, budgets, together, strict=True):
        assert new == generate_lib.generate(model, [prompt], max_new_tokens=budget, **settings)[0]
    assert all(len(new) <= budget for new, budget in zip(together, budgets, strict=True))


def test_stops_stream_in_order_and_the_final_cache_stays_usable():
    """generate dispatches each step before the previous step's tokens reach the host: stopping
    early still yields the tokens up to the stop, streams each step once, and hands `on_cache` a
    live cache (not the one donated to the step computed past the stop)."""
    model = init_model(tiny_config(ahn_type="gdn"), seed=1, ahn_output_init="normal")
    prompts = np.random.default_rng(3).integers(0, 64, (2, 9)).tolist()
    settings = dict(mode="ahn", window=4, sinks=2)
    free = generate_lib.generate(model, prompts, max_new_tokens=10, **settings)
    stop = free[0][3]  # row 0 stops at its 4th token, row 1 where this id first appears, if at all
    streamed, caches = [], []
    stopped = generate_lib.generate(
        model, prompts, max_new_tokens=10, stop_ids=[stop], on_tokens=streamed.append,
        on_cache=caches.append, **settings,
    )  # fmt: skip
    for row, new in enumerate(free):
        expected = new[: new.index(stop)] if stop in new else new
        assert stopped[row] == expected
    # one streamed step per loop round, until the last row stops (its stop streamed as -1)
    ends = [new.index(stop) + 1 if stop in new else len(new) for new in free]
    assert len(streamed) == max(ends)
    columns = np.stack(streamed).T.tolist()  # [B, steps]
    for column, new in zip(columns, stopped, strict=True):
        assert column == new + [-1] * (len(streamed) - len(new))
    cache = caches[0]
    assert not any(x.is_deleted() for x in jax.tree.leaves(cache))
    assert cache.nbytes() > 0


def test_decode_reaches_the_cache(monkeypatch):
    model = init_model(tiny_config(ahn_type="gdn"), seed=0)
    calls = []
    init_cache = model.init_cache
    monkeypatch.setattr(model, "init_cache", lambda *a, **k: calls.append(k) or init_cache(*a, **k))
    generate_lib.generate(model, [[1, 2, 3]], max_new_tokens=2, mode="ahn", window=4)
    generate_lib.generate(
        model, [[1, 2, 3]], max_new_tokens=2, mode="ahn", window=4, decode="reference"
    )
    assert [c["decode"] for c in calls] == ["exact", "reference"]
    # the reference's full and sliding-window baselines drop nothing: refused, not run otherwise
    for mode, window in (("swa", 4), ("full", None)):
        with pytest.raises(ValueError, match=f"mode '{mode}' takes decode \"exact\""):
            generate_lib.generate(
                model, [[1, 2, 3]], max_new_tokens=2, mode=mode, window=window, decode="reference"
            )


def test_generate_names_a_window_mode_full_takes_none_of_and_one_the_others_need():
    model = init_model(tiny_config(ahn_type="gdn"), seed=0)
    with pytest.raises(ValueError, match="mode 'full' attends the whole context"):
        generate_lib.generate(model, [[1, 2, 3]], max_new_tokens=2, mode="full", window=4)
    with pytest.raises(ValueError, match="mode 'ahn' needs window=W"):
        generate_lib.generate(model, [[1, 2, 3]], max_new_tokens=2, mode="ahn")


def test_the_decode_step_compiles_once_and_full_mode_lengths_share_it(monkeypatch):
    """One decode program per mode: a full-mode cache holds the context rounded up, so nearby
    lengths share it (each total compiled its own)."""
    model = init_model(tiny_config(ahn_type="gdn"), seed=0)
    misses = []
    real = generate_lib._step

    def counting(*args, **kwargs):
        before = real._cache_size()
        out = real(*args, **kwargs)
        misses.append(real._cache_size() - before)
        return out

    monkeypatch.setattr(generate_lib, "_step", counting)
    generate_lib.generate(model, [[1, 2, 3]], max_new_tokens=6, mode="ahn", window=4, sinks=1)
    generate_lib.generate(model, [[1, 2, 3]], max_new_tokens=6, mode="full")
    generate_lib.generate(model, [[1, 2, 3, 4]], max_new_tokens=9, mode="full")
    assert sum(misses) <= 2, misses  # one program per mode


def test_cli_streams_a_prompt_and_batches_jsonl(tmp_path):
    model_dir = tmp_path / "model"
    save_tiny_qwen2(model_dir, vocab_size=151936, hidden_size=32, intermediate_size=48)
    write_qwen25_tokenizer(model_dir)
    # greedy (the file's sampling settings unused) with its penalty; no eos: the tokenizer's
    (model_dir / "generation_config.json").write_text(
        json.dumps(dict(do_sample=False, repetition_penalty=1.3, temperature=0.7, top_k=20))
    )
    base = [sys.executable, "-m", "ahn_jax.generate", f"--model={model_dir}", "--window=8",
            "--sinks=2", "--max_new_tokens=5"]  # fmt: skip

    def run(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, cwd=ROOT)

    single = run("--prompt=To be, or not to be", "--mode=swa", "--decode=exact")
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
    bad = run(f"--jsonl={prompts}", "--mode=swa")
    assert bad.returncode != 0 and "prompts.jsonl:2" in bad.stderr
    bad = run("--prompt=x", "--do_sample", "--temperature=0")  # the flags over the file
    assert bad.returncode != 0 and "temperature must be > 0 when sampling" in bad.stderr


def test_a_window_that_nothing_leaves_is_noted(capsys):
    """Prompts whose tokens all fit in S + W decode as full attention: generate says so (a W
    recorded for a long-context model, 32,640, on short prompts would otherwise look like AHN)."""
    import dataclasses

    from ahn_jax.inference.generation_config import DEFAULTS
    from ahn_jax.tokenizer import ByteTokenizer

    model = init_model(tiny_config(vocab_size=256, ahn_type="gdn"), seed=1)
    generation = dataclasses.replace(DEFAULTS, max_new_tokens=3)
    settings = dict(generation=generation, mode="ahn", sinks=2, stop_ids=[])
    # 8 prompt bytes + 3 new tokens: 10 attended (the last one is only chosen)
    completions.stream_completion(model, ByteTokenizer(), "To be, o", chat=False, window=8,
                                   **settings)  # fmt: skip
    assert "note: mode ahn: no token leaves S + W = 10 (at most 10 " in capsys.readouterr().err
    # the reference's decode drops cache index 128 whatever leaves: no such promise there
    completions.stream_completion(model, ByteTokenizer(), "To be, o", chat=False, window=8,
                                   decode="reference", **settings)  # fmt: skip
    assert "note:" not in capsys.readouterr().err
    completions.stream_completion(model, ByteTokenizer(), "To be, o", chat=False, window=7,
                                   **settings)  # fmt: skip
    assert "note:" not in capsys.readouterr().err


def _stream(monkeypatch, capsys, tokens) -> str:
    """What stream_completion writes for a generation of `tokens` (the model's part stubbed)."""
    from ahn_jax.tokenizer import ByteTokenizer

    def generated(model, prompts, *, on_tokens, **settings):
        for token in tokens:
            on_tokens(np.asarray([token]))

    monkeypatch.setattr(completions, "generate", generated)
    completions.stream_completion(None, ByteTokenizer(), "hi", chat=False, mode="full")
    return capsys.readouterr().out


def test_a_character_split_over_tokens_streams_whole(monkeypatch, capsys):
    """Each byte of a multi-byte character decodes to U+FFFD until the last: written then, the
    characters were lost for good (byte models, Qwen's byte-level BPE: emoji, rare CJK)."""
    text = "h\u00e9llo \u4e16\u754c \U0001f917"
    assert _stream(monkeypatch, capsys, list(text.encode())) == text + "\n"
    # bytes that never complete a character are written at the end, as decode gives them
    assert _stream(monkeypatch, capsys, [ord("a"), 0xE4, 0xB8]) == "a\ufffd\n"


def test_sampled_batches_draw_their_own_numbers(tmp_path, capsys):
    """Four equal prompts, two per batch, sampled: every batch used the one seed, so rows 1 and 3
    (and 2 and 4) came out the same."""
    import dataclasses

    from ahn_jax.inference.generation_config import DEFAULTS
    from ahn_jax.tokenizer import ByteTokenizer

    model = init_model(tiny_config(vocab_size=256), seed=1)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "To be, or not"}\n' * 4)
    generation = dataclasses.replace(DEFAULTS, do_sample=True, top_k=0, max_new_tokens=8)
    lines = completions.complete_jsonl(model, ByteTokenizer(), str(prompts), chat=False,
                                        batch_size=2, generation=generation, mode="full",
                                        seed=0, stop_ids=[])  # fmt: skip
    texts = [json.loads(line)["completion"] for line in lines]
    assert len(set(texts)) == 4, texts


@pytest.mark.parametrize(
    "record, message",
    [({"prompt": ""}, "the prompt is empty"), ({"messages": []}, '"messages" is empty'),
     ({"messages": ["hi"]}, "messages\\[0\\] is not a"),
     ({"messages": [{"role": "tool", "content": "x"}]}, "messages\\[0\\].role = 'tool'"),
     ({"messages": [{"role": "user", "content": 5}]}, "messages\\[0\\].content must be")],
)  # fmt: skip
def test_a_prompt_record_that_cannot_be_generated_from_is_named(
    tmp_path, qwen25_tokenizer_dir, record, message
):
    """Each gave a traceback (ValueError, KeyError, AttributeError) without the file's line."""
    from absl import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n' + json.dumps(record) + "\n")
    tokenizer = generate_lib.load_tokenizer(str(qwen25_tokenizer_dir), 151936)
    with pytest.raises(app.UsageError, match=f"p\\.jsonl:2: {message}"):
        completions.complete_jsonl(None, tokenizer, str(prompts), chat=False, batch_size=1)


class _InterruptedError(Exception):
    """Stands for Ctrl-C during a batch."""


def test_an_interrupted_jsonl_run_resumes_after_its_finished_batches(tmp_path, monkeypatch):
    """Batches kept in <out>.partial as they finish: the same run again generates only the rest
    (sampled: the batches keep their seeds), and the output equals an uninterrupted run's; a torn
    last line is dropped; other settings are refused."""
    import dataclasses

    from absl import app

    from ahn_jax.inference.generation_config import DEFAULTS
    from ahn_jax.inference.partial_output import PartialOutput
    from ahn_jax.tokenizer import ByteTokenizer

    model = init_model(tiny_config(vocab_size=256), seed=1)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "x" * n}) + "\n" for n in (5, 9, 3, 7, 4)))
    generation = dataclasses.replace(DEFAULTS, do_sample=True, top_k=0, max_new_tokens=4)
    kwargs = dict(chat=False, batch_size=2, generation=generation, mode="full", seed=0,
                  stop_ids=[])  # fmt: skip
    straight = completions.complete_jsonl(model, ByteTokenizer(), str(prompts), **kwargs)

    real, calls, interrupt_at = completions.generate, [], [2]

    def interrupted_at_the_second_batch(model, batch, **settings):
        calls.append(len(batch))
        if len(calls) in interrupt_at:
            raise _InterruptedError
        return real(model, batch, **settings)

    monkeypatch.setattr(completions, "generate", interrupted_at_the_second_batch)
    partial = PartialOutput(tmp_path / "out.jsonl", {"run": 1})
    with pytest.raises(_InterruptedError):
        completions.complete_jsonl(model, ByteTokenizer(), str(prompts), partial=partial, **kwargs)
    with open(partial.path, "a") as f:
        f.write('{"index": 3, "compl')  # a line cut short
    calls.clear(), interrupt_at.clear()
    lines = completions.complete_jsonl(model, ByteTokenizer(), str(prompts), partial=partial,
                                       **kwargs)  # fmt: skip
    assert calls == [2, 1]  # the first batch was kept
    partial.finish(lines)
    assert (tmp_path / "out.jsonl").read_text() == "".join(x + "\n" for x in straight)
    assert not partial.path.exists()
    other = json.dumps({"settings": {"run": 2, "generation": {"top_k": 5, "seed": 0}}}) + "\n"
    partial.path.write_text(other + json.dumps({"index": 0, "completion": "x"}) + "\n")
    # the error names what changed
    message = r"other settings \(generation.top_k: 5 -> 20, run: 2 -> 1\)"
    with pytest.raises(app.UsageError, match=message):
        now = {"run": 1, "generation": {"top_k": 20, "seed": 0}}
        PartialOutput(tmp_path / "out.jsonl", now).done()
    # one that holds no completion yet (a run that failed at once) is started over
    partial.path.write_text(other)
    assert PartialOutput(tmp_path / "out.jsonl", {"run": 1}).done() == {}
    # no prompt at all: nothing kept, an empty output (finish found no .partial to remove)
    (tmp_path / "empty.jsonl").write_text("\n")
    empty = PartialOutput(tmp_path / "o2.jsonl", {"run": 1})
    empty.finish(completions.complete_jsonl(model, ByteTokenizer(), str(tmp_path / "empty.jsonl"),
                                            partial=empty, **kwargs))  # fmt: skip
    assert (tmp_path / "o2.jsonl").read_text() == ""
    assert completions._batch_seed(-1, 0) != completions._batch_seed(1, 0)  # a negative --seed


def test_the_readmes_python_runs_as_written(tmp_path, qwen25_tokenizer_dir, monkeypatch):
    """README "Use", the whole Python block: on a tiny model saved under the directory names it
    uses (with Qwen's tokenizer, a generation_config.json of Qwen's keys and AHN weights saved
    beside it), with a smaller W, S and budget; the mesh over the tests' 8 CPU devices."""
    import shutil

    from ahn_jax import from_pretrained

    model_dir = tmp_path / "Qwen2.5-3B-Instruct"
    save_tiny_qwen2(model_dir, vocab_size=151936, hidden_size=32, intermediate_size=48)
    shutil.copy(qwen25_tokenizer_dir / "tokenizer.json", model_dir)
    settings = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
                "repetition_penalty": 1.05, "eos_token_id": [151645, 151643]}  # fmt: skip
    (model_dir / "generation_config.json").write_text(json.dumps(settings))
    from_pretrained(model_dir, ahn_type="gdn").save_ahn(
        tmp_path / "AHN-GDN-for-Qwen-2.5-Instruct-3B"
    )
    shutil.copytree(model_dir, tmp_path / "ckpt")
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Use\n\n```python\n") :].split("```")[1].removeprefix("python")
    code = block.replace("window=32640, sinks=128", "window=16, sinks=4")
    code = code.replace("max_new_tokens=256", "max_new_tokens=6")
    assert code.count("window=16, sinks=4") == 3
    monkeypatch.chdir(tmp_path)
    rows = np.random.default_rng(0).integers(0, 1000, (2, 24)).astype(np.int32)
    scope = {"input_ids": rows, "positions": np.arange(24)[None].repeat(2, 0) + 5,
             "prompt_ids": rows[:1], "next_ids": rows[:1, 0]}  # fmt: skip
    exec(code, scope)  # noqa: S102 - the README's own lines
    assert 1 <= len(scope["new_ids"]) <= 6
    assert scope["logits"].shape == (2, 24, 151936)  # the last line's, under the mesh
