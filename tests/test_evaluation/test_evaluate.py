"""The evaluation harness: pass keys, perplexity through the cache, batching, resume, the CLI."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared import save_tiny_qwen2, tiny_config, write_qwen25_tokenizer

from ahn_jax.evaluation import passkey, perplexity, runner
from ahn_jax.evaluation import results as results_lib
from ahn_jax.model.transformer import init_model
from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer

ROOT = Path(__file__).parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _settings(task, mode="ahn", **changes):
    values = dict(
        task=task, model="m", ahn=None, mode=mode, window=8, sinks=2, max_length=None,
        max_new_tokens=None, chat=False, dtype="float32", extra={},
    )  # fmt: skip
    return results_lib.Settings(**{**values, **changes})


class _KilledError(Exception):
    """Stands for the process dying mid-run."""


@pytest.fixture(scope="module")
def byte_model():
    return init_model(tiny_config(vocab_size=256, ahn_type="gdn"), seed=3, ahn_output_init="normal")


def test_passkey_generator_is_deterministic_and_exact(qwen25_tokenizer_dir):
    for tokenizer in (ByteTokenizer(), HFTokenizer.from_dir(qwen25_tokenizer_dir)):
        args = (tokenizer, [1000, 1500], [0.0, 0.5, 1.0], 3)
        first, again = (
            passkey.passkey_samples(*args, seed=7),
            passkey.passkey_samples(*args, seed=7),
        )
        assert first == again
        other = passkey.passkey_samples(*args, seed=8)
        assert [s.passkey for s in first] != [s.passkey for s in other]
        assert len({s.passkey for s in first}) > 1
        for sample in first:
            assert len(sample.ids) == sample.length
            text = tokenizer.decode(sample.ids)
            needle = passkey.NEEDLE.format(key=sample.passkey)
            assert text.count(needle) == 1 and text.endswith(passkey.QUESTION)
            assert text.startswith(passkey.INSTRUCTION)
            # the needle sits at its depth of the filler, to within one filler block
            filler = len(text) - len(passkey.INSTRUCTION) - len(needle) - len(passkey.QUESTION)
            where = (text.index(needle) - len(passkey.INSTRUCTION)) / filler
            assert sample.depth - len(passkey.FILLER) / filler <= where <= sample.depth
        # a sample does not depend on which other cells are asked for
        alone = passkey.passkey_samples(tokenizer, [1500], [1.0], 3, seed=7)
        assert alone == [s for s in first if s.length == 1500 and s.depth == 1.0]


@pytest.mark.parametrize("mode", ["ahn", "swa", "full"])
def test_perplexity_through_the_cache_equals_the_parallel_forward(byte_model, mode):
    ids = np.random.default_rng(0).integers(0, 256, (2, 23)).astype(np.int32)
    nll, cache_bytes = perplexity.token_nll(byte_model, ids, _settings("perplexity", mode), chunk=5)
    window = {} if mode == "full" else dict(window=8, sinks=2)
    logits = byte_model(jnp.asarray(ids), mode=mode, **window)
    log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    expected = -np.take_along_axis(np.asarray(log_probs), ids[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)
    assert cache_bytes > 0


def test_batched_generation_resumes_after_a_crash(byte_model, tmp_path, monkeypatch):
    tokenizer, settings = ByteTokenizer(), _settings("passkey", max_new_tokens=4)
    # two prompt lengths and two budgets, interleaved: the batches of 4 are ragged
    samples = passkey.passkey_samples(tokenizer, [300, 240], [0.0, 0.5, 1.0], 1, seed=0)
    prompts = [
        runner.Prompt(s.id, s.ids, 3 + i % 2, dict(dataset="passkey", answers=[s.passkey],
                        context_length=s.length, depth=s.depth))
        for i, s in enumerate(samples)
    ]  # fmt: skip
    results_lib.check_settings(tmp_path / "one_by_one", settings)
    runner.run_generation(byte_model, tokenizer, prompts, settings, tmp_path / "one_by_one", 1)
    reference = {r["id"]: r for r in results_lib.read_results(tmp_path / "one_by_one")}
    assert len(reference) == 6 and all(r["batch_size"] == 1 for r in reference.values())

    out = tmp_path / "crashed"
    results_lib.check_settings(out, settings)
    real_generate, calls, crash_at = runner.generate_lib.generate, [], [2]

    def counting_generate(model, batch, **kwargs):
        calls.append(len(batch))
        if len(calls) in crash_at:
            raise _KilledError
        return real_generate(model, batch, **kwargs)

    monkeypatch.setattr(runner.generate_lib, "generate", counting_generate)
    with pytest.raises(_KilledError):
        runner.run_generation(byte_model, tokenizer, prompts, settings, out, 4)
    assert len(results_lib.read_results(out)) == 4  # the first batch was saved
    with open(out / results_lib.PREDICTIONS, "a") as f:
        f.write('{"id": "torn')  # a write cut short by the crash
    calls.clear(), crash_at.clear()
    runner.run_generation(byte_model, tokenizer, prompts, settings, out, 4)
    assert calls == [2]  # only the samples not yet scored
    in_order = results_lib.read_results(out)
    assert [r["id"] for r in in_order] == [p.id for p in prompts]  # the input's order
    results = {r["id"]: r for r in in_order}
    assert results.keys() == reference.keys()
    assert {r["prompt_tokens"] for r in in_order} == {300, 240}
    for key, record in results.items():  # batching does not change what is generated
        assert (
            record["pred"] == reference[key]["pred"] and record["score"] == reference[key]["score"]
        )


def test_cli_scores_longbench_files_resumes_and_guards_settings(tmp_path):
    model_dir = (
        tmp_path / "qwen2-tiny"
    )  # "qwen2" in the name: the reference applies the chat template
    save_tiny_qwen2(model_dir, vocab_size=151936, hidden_size=32, intermediate_size=48)
    write_qwen25_tokenizer(model_dir)
    # as Qwen2.5-Instruct's: HF generate applies the penalty to the reference's greedy decoding
    generation = {"do_sample": True, "repetition_penalty": 1.05, "eos_token_id": [151645, 151643]}
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ahn_jax.evaluate", f"--model={model_dir}", "--task=longbench",
               f"--data={FIXTURES / 'longbench'}", "--mode=swa", "--window=16", "--sinks=2",
               "--max_length=60", "--max_new_tokens=3", f"--out={out}"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert "hotpotqa.jsonl:3: invalid JSON" in first.stderr
    assert "chat template on" in first.stderr
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["hotpotqa:1", "hotpotqa:2", "triviaqa:1"]
    by_id = {r["id"]: r for r in records}
    assert by_id["hotpotqa:1"]["truncated"]  # front truncation to 60 - 3 tokens, then the template
    assert by_id["hotpotqa:1"]["prompt_tokens"] > 57 > by_id["triviaqa:1"]["prompt_tokens"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["datasets"]) == {"hotpotqa", "triviaqa"}
    assert summary["datasets"]["hotpotqa"]["samples"] == 2
    for name in ("summary.md", "score_by_length.png", "memory_by_length.png", "run.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "run.json").read_text())["repetition_penalty"] == 1.05
    before = (out / "predictions.jsonl").read_text()
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert (out / "predictions.jsonl").read_text() == before  # nothing was scored twice
    changed = subprocess.run([*command[:-1], "--window=32", f"--out={out}"], capture_output=True,
                             text=True, cwd=ROOT)  # fmt: skip
    assert changed.returncode != 0 and "window: 16 -> 32" in changed.stderr


def test_perplexity_run_buckets_by_position_and_compares_modes(byte_model, tmp_path, capsys):
    from ahn_jax.evaluation import report

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    docs = tmp_path / "docs.jsonl"
    lines = [{"text": text}, {"title": "no text"}, {"text": text[::-1]}, {"text": "short"}]
    docs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    runs = []
    for mode in ("swa", "full"):
        settings = _settings("perplexity", mode, max_length=64, extra={"bucket": 16})
        out = tmp_path / mode
        results_lib.check_settings(out, settings)
        perplexity.run_perplexity(byte_model, ByteTokenizer(), [docs], settings, out,
                                batch_size=2, chunk=32, limit=None)  # fmt: skip
        records = results_lib.read_results(out)
        assert [r["id"] for r in records] == ["docs:1", "docs:3"]
        nll, _ = perplexity.token_nll(
            byte_model, np.asarray([list(text.encode())[:64]], np.int32), settings, chunk=64
        )
        # bucket 0 holds the losses predicting positions 1..15, bucket 3 positions 48..63
        assert records[0]["bucket_nll"][0] == pytest.approx(float(nll[0, :15].mean()), rel=1e-5)
        assert records[0]["bucket_nll"][3] == pytest.approx(float(nll[0, 47:].mean()), rel=1e-5)
        assert records[0]["bucket_tokens"] == [15, 16, 16, 16]
        summary = report.write_report(out, dataclasses.asdict(settings), records,
                                           byte_model.config)  # fmt: skip
        all_nll = np.mean([r["score"] for r in records])
        assert summary["loss"] == pytest.approx(all_nll, abs=1e-4)
        assert [b["start"] for b in summary["buckets"]] == [0, 16, 32, 48]
        assert (out / "loss_by_position.png").exists()
        runs.append(out)
    assert "docs.jsonl:2: needs a JSON object with a 'text' string" in capsys.readouterr().err
    report.compare_plot(runs, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 0
