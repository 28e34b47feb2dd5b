"""The evaluation harness: pass keys, perplexity through the cache, batching, resume, the CLI."""

import dataclasses
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app
from absl.app import UsageError
from shared import save_tiny_qwen2, tiny_config, write_qwen25_tokenizer

from ahn_jax.checkpoints.recorded import Recorded
from ahn_jax.evaluation import passkey, perplexity, ruler, runner, tasks
from ahn_jax.evaluation import results as results_lib
from ahn_jax.evaluation.settings import resolve_settings, window_and_sinks
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


def test_perplexity_with_layers_kept_as_full_attention_equals_the_parallel_forward():
    """The reference's fa_layer_ids: such a layer's cache holds the whole document (init_cache
    needs max_length; perplexity once omitted it and raised in modes swa and ahn)."""
    config = tiny_config(vocab_size=256, ahn_type="gdn", full_attention_layers=(1,))
    model = init_model(config, seed=3, ahn_output_init="normal")
    ids = np.random.default_rng(1).integers(0, 256, (2, 23)).astype(np.int32)
    for mode in ("ahn", "swa"):
        nll, _ = perplexity.token_nll(model, ids, _settings("perplexity", mode), chunk=5)
        logits = model(jnp.asarray(ids), mode=mode, window=8, sinks=2)
        log_probs = np.asarray(jax.nn.log_softmax(logits[:, :-1], axis=-1))
        expected = -np.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
        np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)


def test_passkey_prompts_take_the_chat_template_when_asked(qwen25_tokenizer_dir):
    """`--task passkey --chat on`: one user turn, the answer prefix opening the assistant's
    turn, still exactly `length` tokens (the setting was recorded but the prompt stayed raw)."""
    tokenizer = HFTokenizer.from_dir(qwen25_tokenizer_dir)
    extra = dict(lengths=[600], depths=[0.5], samples=2, seed=3)
    for chat in (False, True):
        prompts = runner.passkey_prompts(tokenizer, _settings("passkey", chat=chat, extra=extra))
        for prompt in prompts:
            assert len(prompt.ids) == 600
            text = tokenizer.decode(prompt.ids)
            assert passkey.NEEDLE.format(key=prompt.record["answers"][0]) in text
            if chat:
                assert text.startswith("<|im_start|>system\n" + tokenizer.default_system)
                assert text.endswith(
                    "What is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is"
                )
            else:
                assert "<|im_start|>" not in text and text.endswith(passkey.QUESTION)


def test_a_full_mode_records_cache_bytes_for_the_positions_its_cache_holds(byte_model, tmp_path):
    """`generate` rounds a full cache up (one program for nearby lengths): the record's
    cache_tokens are the positions those bytes hold, as the memory plot's cost model reads them."""
    from ahn_jax.costs import table

    tokenizer, settings = ByteTokenizer(), _settings("passkey", "full", window=0, sinks=0)
    samples = passkey.passkey_samples(tokenizer, [300], [0.5], 1, seed=0)
    prompts = [runner.Prompt(s.id, s.ids, 2, dict(dataset="passkey", answers=[s.passkey],
                             context_length=s.length, depth=s.depth)) for s in samples]  # fmt: skip
    results_lib.check_settings(tmp_path, settings)
    runner.run_generation(byte_model, tokenizer, prompts, settings, tmp_path, 1)
    (record,) = results_lib.read_results(tmp_path)
    assert record["cache_tokens"] >= record["prompt_tokens"] + 2
    modelled = table.decode_cache_bytes(byte_model.config, record["cache_tokens"], 0, "full")
    assert record["cache_bytes"] == modelled


def test_batched_generation_resumes_after_a_crash(byte_model, tmp_path, monkeypatch, capsys):
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
    runner.run_generation(byte_model, tokenizer, prompts, settings, out, 4, chunk=128)
    assert calls == [2]  # only the samples not yet scored
    _a_record_without_its_newline_is_kept_and_a_damaged_one_named(byte_model, prompts, out)
    # the bar tells where the batch in flight stands (the first stage of each is drawn)
    err = capsys.readouterr().err
    assert "prompt 128/300 tokens" in err and "prompt 300/300 tokens" in err  # --chunk's chunks
    in_order = results_lib.read_results(out)
    assert [r["id"] for r in in_order] == [p.id for p in prompts]  # the input's order
    results = {r["id"]: r for r in in_order}
    assert results.keys() == reference.keys()
    assert {r["prompt_tokens"] for r in in_order} == {300, 240}
    for key, record in results.items():  # batching does not change what is generated
        assert (
            record["pred"] == reference[key]["pred"] and record["score"] == reference[key]["score"]
        )


def _a_record_without_its_newline_is_kept_and_a_damaged_one_named(model, prompts, out):
    """A crash between a record and its newline: the record counts, and the next one appended
    starts its own line (it was glued on, and every later run failed). A damaged line before the
    last is the user's to fix: one error naming it, not a traceback."""
    path = out / results_lib.PREDICTIONS
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    assert [r["id"] for r in results_lib.read_results(out)] == [p.id for p in prompts]
    assert path.read_bytes() == whole
    lines = whole.split(b"\n")
    path.write_bytes(b"\n".join([lines[0], b'{"id": "dam', *lines[1:]]))
    with pytest.raises(app.UsageError, match=r"predictions\.jsonl:2: invalid JSON .*delete that"):
        results_lib.read_results(out)
    path.write_bytes(whole)


def test_the_chat_rule_says_why_it_left_the_template_off(tmp_path):
    """--chat auto follows the reference's name rule, which leaves out "Qwen2.5-3B-Instruct"
    (no lower-case "qwen2"): the start line says so, and how to apply the template."""
    model_dir = tmp_path / "Qwen2.5-tiny-Instruct"
    save_tiny_qwen2(model_dir, vocab_size=151936, hidden_size=32, intermediate_size=48)
    write_qwen25_tokenizer(model_dir)
    done = subprocess.run(
        [sys.executable, "-m", "ahn_jax.evaluate", f"--model={model_dir}", "--task=longbench",
         f"--data={FIXTURES / 'longbench'}", "--mode=full", "--max_length=60",
         "--max_new_tokens=1", "--limit=1", f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "chat template off (--chat auto: 'Qwen2.5-tiny-Instruct' has no lower-case 'qwen2', the "
        "reference's rule; --chat on applies the template)" in done.stderr
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
    assert "prompts fit in S + W" not in first.stderr  # all longer than S + W = 18
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
    assert f"resuming: 3 of 3 samples already scored in {out / 'predictions.jsonl'}" in again.stderr
    changed = subprocess.run([*command[:-1], "--window=32", f"--out={out}"], capture_output=True,
                             text=True, cwd=ROOT)  # fmt: skip
    assert changed.returncode == 2 and changed.stderr.splitlines()[-1].startswith(
        f"error: {out} holds a run with other settings (window: 16 -> 32)"
    )
    assert "  --" not in changed.stderr  # no flag help under the message
    wide = [*command[:-1], "--window=200", f"--out={tmp_path / 'wide'}", "--limit=2"]
    wide = subprocess.run(wide, capture_output=True, text=True, cwd=ROOT)
    assert wide.returncode == 0, wide.stderr
    assert "note: 2 of 2 prompts fit in S + W = 202 with their answers" in wide.stderr
    # other data under the same file name (ids "hotpotqa:1", ...) does not take these results
    other = tmp_path / "other"
    other.mkdir()
    (other / "hotpotqa.jsonl").write_text(
        (FIXTURES / "longbench" / "hotpotqa.jsonl").read_text().replace("Passage 1", "Passage 2")
    )
    moved = [x if not x.startswith("--data=") else f"--data={other}" for x in command]
    refused = subprocess.run(moved, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2
    assert (
        f"error: {out} holds a run with other settings (--data: hotpotqa.jsonl changed (its "
        "SHA-256 differs from the run's)); use another --out" in refused.stderr
    )
    # a --limit reports its own samples, not everything the directory holds
    limited = subprocess.run([*command, "--limit=1"], capture_output=True, text=True, cwd=ROOT)
    assert limited.returncode == 0, limited.stderr
    assert (out / "predictions.jsonl").read_text() == before
    summary = json.loads((out / "summary.json").read_text())
    assert sum(d["samples"] for d in summary["datasets"].values()) == 1


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
        documents = perplexity.tokenized_documents(ByteTokenizer(), [docs], 64)
        perplexity.run_perplexity(byte_model, documents, settings, out, batch_size=2, chunk=32)
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
    err = capsys.readouterr().err
    assert "docs.jsonl:2: needs a JSON object with a 'text' string" in err
    assert "scored 32/63 tokens" in err  # the bar's stage inside a batch (chunks of 32)
    report.compare_plot(runs, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert "warning" not in capsys.readouterr().err
    # one document: no standard error (it read 0.0000), and the runs no longer match in samples
    one = report.write_report(tmp_path / "swa", dataclasses.asdict(settings), records[:1],
                              byte_model.config)  # fmt: skip
    assert {b["stderr"] for b in one["buckets"]} == {None}
    assert "| 0 | " in report.markdown_table(one) and "n/a (1 document)" in report.markdown_table(
        one
    )
    report.compare_plot(runs, tmp_path / "compare.png")
    assert (
        "warning: the runs scored different numbers of samples ([1, 2])" in capsys.readouterr().err
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"task": "passkey", "settings": {}}))
    with pytest.raises(report.CompareError, match=r"mix tasks \['passkey', 'perplexity'\]"):
        report.compare_plot([*runs, other], tmp_path / "mixed.png")
    (other / "summary.json").write_text("{")
    with pytest.raises(report.CompareError, match=r"other/summary\.json is not valid JSON"):
        report.compare_plot([other], tmp_path / "torn.png")
    empty = {"task": "perplexity", "documents": 0, "settings": {}}  # a run that scored nothing
    (other / "summary.json").write_text(json.dumps(empty))
    with pytest.raises(report.CompareError, match="other: its run scored no document"):
        report.compare_plot([*runs, other], tmp_path / "empty.png")


DOCS = ROOT / "docs" / "evaluation.md"


def _documented_fields() -> dict[str, tuple[set, set]]:
    """docs/evaluation.md's table of predictions.jsonl fields: per column (benchmarks, passkey,
    niah_*, perplexity), (the fields always written, those written where they apply)."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("| field | benchmarks |"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")][1:5]
    found = {column: (set(), set()) for column in columns}
    for line in itertools.takewhile(lambda x: x.startswith("|"), lines[start + 2 :]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        for column, mark in zip(columns, cells[1:5], strict=True):
            if mark in ("x", "(x)"):
                found[column][mark == "(x)"].update(re.findall(r"`(\w+)`", cells[0]))
    return found


def _written_by_generation(model, prompts, settings, out, monkeypatch) -> list[dict]:
    """The records `run_generation` writes for `prompts` (the decoding itself faked: the fields
    do not depend on what is generated)."""

    class Cache:
        def nbytes(self):
            return 0

    def fake_generate(model, batch, on_cache, **kwargs):
        on_cache(Cache())
        return [[65, 66] for _ in batch]

    monkeypatch.setattr(runner.generate_lib, "generate", fake_generate)
    results_lib.check_settings(out, settings)
    runner.run_generation(model, ByteTokenizer(), prompts, settings, out, batch_size=4)
    return results_lib.read_results(out)


def test_the_documented_record_fields_are_the_written_ones(byte_model, tmp_path, monkeypatch):
    tokenizer = ByteTokenizer()
    grid = dict(lengths=[1500], depths=[0.5], samples=1, seed=0)
    lveval = _settings("lveval", max_length=200)
    niah = _settings("niah_multiquery", extra=grid | vars(ruler.make_config("niah_multiquery")))
    # an LV-Eval file with a length level (`level` written) and one without (none)
    with_level = FIXTURES / "lveval" / "factrecall_en_128k.jsonl"
    without = tmp_path / "factrecall_en.jsonl"
    without.write_text(with_level.read_text().replace("factrecall_en_128k", "factrecall_en"))
    prompts = {
        "benchmarks": runner.benchmark_prompts(tasks.LVEVAL, [with_level, without], tokenizer,
                                               lveval, None),
        "passkey": runner.passkey_prompts(tokenizer, _settings("passkey", extra=grid)),
        "niah_*": runner.ruler_prompts(tokenizer, niah),
    }  # fmt: skip
    tasks_of = {"benchmarks": "lveval", "passkey": "passkey", "niah_*": "niah_multiquery"}
    written = {
        column: _written_by_generation(byte_model, prompts[column],
                                       _settings(tasks_of[column]), tmp_path / tasks_of[column],
                                       monkeypatch)
        for column in tasks_of
    }  # fmt: skip
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "To be, or not to be, that is the question." * 2}) + "\n")
    settings = _settings("perplexity", "swa", max_length=64, extra={"bucket": 16})
    results_lib.check_settings(tmp_path / "perplexity", settings)
    perplexity.run_perplexity(byte_model, perplexity.tokenized_documents(tokenizer, [docs], 64),
                              settings, tmp_path / "perplexity", batch_size=1,
                              chunk=32)  # fmt: skip
    written["perplexity"] = results_lib.read_results(tmp_path / "perplexity")
    documented = _documented_fields()
    assert documented.keys() == written.keys()
    for column, records in written.items():
        always, sometimes = documented[column]
        assert records and all(always <= r.keys() <= always | sometimes for r in records), (
            column, always, sometimes, [sorted(r) for r in records])  # fmt: skip
    assert {"level" in r for r in written["benchmarks"]} == {True, False}


def test_pass_keys_niah_and_perplexity_take_the_ahn_configs_window_and_sinks(tmp_path):
    config = tiny_config(ahn_type="gdn")
    found = Recorded({"window": 16, "sinks": 2}, tmp_path / "ahn" / "config.json")

    def attention(task, **flags):
        settings = resolve_settings(config, task, model=str(tmp_path), **flags)
        return settings.window, settings.sinks

    assert attention("passkey", recorded=found) == (16, 2)
    assert attention("perplexity", recorded=found, max_length=64, mode="swa") == (16, 2)
    assert attention("passkey", recorded=found, window=8, sinks=0) == (8, 0)
    released = Recorded({"window": 16}, found.source)  # no num_attn_sinks: none
    assert attention("niah_multikey", recorded=released) == (16, 0)
    assert attention("lveval", recorded=found) == (32640, 128)  # the reference's, as its scripts
    assert attention("longbench", recorded=found) == (8064, 128)
    assert attention("passkey", recorded=found, mode="full") == (0, 0)
    assert attention("longbench", recorded=found, mode="full") == (0, 0)  # not 8064 / 128
    with pytest.raises(UsageError, match="--window and --sinks do not apply to mode full"):
        attention("passkey", mode="full", window=64, sinks=4)
    with pytest.raises(UsageError, match="--task=passkey --mode=ahn needs --window"):
        attention("passkey")
    note = window_and_sinks("passkey", "ahn", None, 4, found)[1]
    assert note == f"window 16 ({found.source}), sinks 4 (--sinks)"


def test_perplexity_data_with_nothing_to_score_is_refused(tmp_path):
    bad, short = tmp_path / "bad.jsonl", tmp_path / "short.jsonl"
    bad.write_text('{"title": "no text"}\n[1, 2]\nnot JSON\n')
    short.write_text('{"text": "short"}\n')
    with pytest.raises(UsageError, match=f"--data {bad}: nothing to evaluate: every record was "
                                         r"skipped \(3; see above\)"):  # fmt: skip
        perplexity.tokenized_documents(ByteTokenizer(), [short, bad], 64)
    with pytest.raises(UsageError, match=r"every document \(1\) is shorter than --max_length=64"):
        perplexity.tokenized_documents(ByteTokenizer(), [short], 64)


def test_data_files_once_each_books_for_perplexity_and_no_two_of_one_name(tmp_path):
    (tmp_path / "lb").mkdir(), (tmp_path / "other").mkdir()
    hotpot, books = tmp_path / "lb" / "hotpotqa.jsonl", tmp_path / "books"
    hotpot.write_text("{}\n"), (tmp_path / "other" / "hotpotqa.jsonl").write_text("{}\n")
    # a file given beside its directory is read once (its samples were scored twice)
    assert results_lib.data_files([str(hotpot), str(tmp_path / "lb")]) == [hotpot]
    with pytest.raises(UsageError, match=r"two files named hotpotqa \("):
        results_lib.data_files([str(tmp_path / "lb"), str(tmp_path / "other")])
    books.mkdir()
    (books / "a.txt").write_text("text"), (books / "b.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UsageError, match=r"has no \.jsonl files"):
        results_lib.data_files([str(books)])
    found = results_lib.data_files([str(books)], (".jsonl", ".txt"))
    assert found == [books / "a.txt", books / "b.txt"]
    with pytest.raises(UsageError, match=r"b\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        perplexity.read_documents(found)


def test_small_mistakes_are_named_by_their_flag(tmp_path):
    from ahn_jax.evaluation import report

    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError, match=r"--out .*afile is a file"):  # was [Errno 17]
        results_lib.check_settings(tmp_path / "afile", _settings("passkey"))
    with pytest.raises(report.CompareError, match="no run to compare"):  # "mix tasks []"
        report.compare_plot([], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"^--lengths 20 is too short"):
        passkey.passkey_samples(ByteTokenizer(), [20], [0.5], 1, seed=0)


def test_a_file_of_no_dataset_is_named_once_not_per_record(tmp_path, capsys):
    data = tmp_path / "foo.jsonl"
    data.write_text('{"context": "c", "input": "i", "answers": ["a"]}\n' * 3)
    settings = _settings("longbench", max_length=0)
    with pytest.raises(UsageError, match="nothing to evaluate"):
        runner.benchmark_prompts(tasks.LONGBENCH, [data], ByteTokenizer(), settings, None)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"skipping {data}:1: dataset 'foo' is not one of longbench's")
    assert line.endswith("(and 2 more lines alike)")


def test_a_damaged_run_json_is_named_not_a_traceback(tmp_path):
    (tmp_path / results_lib.RUN_SETTINGS).write_text("{not json")
    with pytest.raises(UsageError, match=r"run\.json is not the settings of a run"):
        results_lib.check_settings(tmp_path, _settings("passkey"))


def test_a_run_json_from_before_data_was_recorded_still_resumes(tmp_path):
    """Its data are unknown, not "none": not compared (a newer field with a default, as decode,
    is compared with its default)."""
    settings = _settings("longbench", "swa", data={"files": {}, "dataset": None})
    written = dataclasses.asdict(settings)
    del written["data"], written["decode"]
    (tmp_path / results_lib.RUN_SETTINGS).write_text(json.dumps(written))
    results_lib.check_settings(tmp_path, settings)  # resumes
    with pytest.raises(UsageError, match=r"decode: 'exact' -> 'reference'"):
        results_lib.check_settings(tmp_path, dataclasses.replace(settings, decode="reference"))


def test_data_files_may_be_added_but_not_changed_and_old_full_runs_resume(tmp_path):
    data = {"files": {"a.jsonl": "1", "b.jsonl": "2"}, "dataset": None}
    settings = _settings("longbench", "full", window=0, sinks=0, data=data)
    results_lib.check_settings(tmp_path, settings)
    more = {"files": {"b.jsonl": "2", "c.jsonl": "3"}, "dataset": None}
    results_lib.check_settings(tmp_path, dataclasses.replace(settings, data=more))
    other = {"files": {"b.jsonl": "9"}, "dataset": "hotpotqa"}
    message = r"\(--data: b.jsonl changed \(its SHA-256 differs from the run's\), --dataset: None"
    with pytest.raises(UsageError, match=message):
        results_lib.check_settings(tmp_path, dataclasses.replace(settings, data=other))
    # a full-mode run written when it recorded the benchmark's W and S (unused) still resumes
    written = json.loads((tmp_path / results_lib.RUN_SETTINGS).read_text())
    older = written | {"window": 8064, "sinks": 128}
    (tmp_path / results_lib.RUN_SETTINGS).write_text(json.dumps(older))
    results_lib.check_settings(tmp_path, settings)


def test_a_grid_may_grow_on_resume_and_other_settings_may_not(tmp_path):
    """Each cell's samples come from its own seed: more lengths, depths or samples per cell keep
    the cells scored; the seed, or anything else, still refuses; run.json shows the latest grid."""
    grid = dict(lengths=[64], depths=[0.5], samples=1, seed=3)
    results_lib.check_settings(tmp_path, _settings("passkey", extra=grid))
    grown = dict(grid, lengths=[64, 128], depths=[0.0, 0.5], samples=2)
    results_lib.check_settings(tmp_path, _settings("passkey", extra=grown))
    assert json.loads((tmp_path / results_lib.RUN_SETTINGS).read_text())["extra"] == grown
    with pytest.raises(UsageError, match="extra: "):
        results_lib.check_settings(tmp_path, _settings("passkey", extra=dict(grown, seed=4)))
    with pytest.raises(UsageError, match="window: 8 -> 16"):
        results_lib.check_settings(tmp_path, _settings("passkey", extra=grown, window=16))


@pytest.mark.parametrize("grid", [{"lengths": ["300", "300"]}, {"depths": ["0.5", "0.50"]}])
def test_a_grid_value_given_twice_is_refused(grid):
    """Each cell was scored, and counted in the summary, twice."""
    name = next(iter(grid))
    with pytest.raises(UsageError, match=f"--{name} names a value twice"):
        resolve_settings(tiny_config(), "passkey", model="m", mode="full", **grid)


def test_a_limit_takes_the_first_documents_whatever_is_already_scored(byte_model, tmp_path):
    """--limit 2, then --limit 3: three documents scored, the first three (a limit counted after
    the scored ones were skipped scored five)."""
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": text[i:] + text[:i]}) + "\n" for i in range(5)))
    documents = perplexity.tokenized_documents(ByteTokenizer(), [docs], 64)
    settings = _settings("perplexity", "swa", max_length=64, extra={"bucket": 16})
    results_lib.check_settings(tmp_path / "out", settings)
    for limit in (2, 3):
        perplexity.run_perplexity(byte_model, documents[:limit], settings, tmp_path / "out",
                                  batch_size=2, chunk=32)  # fmt: skip
    scored = [r["id"] for r in results_lib.read_results(tmp_path / "out")]
    assert sorted(scored) == sorted(doc_id for doc_id, _ in documents[:3])
