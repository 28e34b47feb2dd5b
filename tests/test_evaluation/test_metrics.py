"""Benchmark metrics and loaders against hand-made fixtures in each benchmark's schema.

Every expected score in fixtures/eval/metric_cases.jsonl was worked out by hand (its "why" field
shows the arithmetic), so these tests check our port of the reference's scoring rules, not the
port against itself.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from ahn_jax.evaluation import figures, metrics, report, tasks
from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
CASES = [json.loads(line) for line in (FIXTURES / "metric_cases.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['dataset']}:{c['pred'][:12]}")
def test_hand_scored_predictions(case):
    if case["benchmark"] == "passkey":
        got = metrics.passkey_exact_match(case["pred"], case["answers"][0])
    else:
        benchmark = tasks.BENCHMARKS[case["benchmark"]]
        got = tasks.score(
            benchmark, case["dataset"], case["pred"], case["answers"], case["keywords"]
        )
    # 1e-7: rouge's F adds 1e-8 to its denominator
    assert got == pytest.approx(case["expected"], abs=1e-7), case["why"]


def test_every_dataset_has_a_hand_scored_case():
    covered = {(c["benchmark"], c["dataset"]) for c in CASES}
    for benchmark in tasks.BENCHMARKS.values():
        assert {(benchmark.name, d) for d in benchmark.datasets} <= covered


def test_rouge_errors_score_zero():
    assert metrics.rouge_score("", "an answer") == 0.0  # rouge raises on empty text


def test_lveval_loader_reads_the_schema_and_reports_bad_lines():
    path = FIXTURES / "lveval" / "factrecall_en_128k.jsonl"
    samples, problems = tasks.read_samples(tasks.LVEVAL, path)
    assert [s.id for s in samples] == ["factrecall_en_128k:1", "factrecall_en_128k:3"]
    # the dataset's prompt and metric are found without the length level, which is kept apart
    assert {(s.dataset, s.level) for s in samples} == {("factrecall_en", "128k")}
    assert samples[0].keywords == "David Beckham" and samples[1].keywords == "Paris"
    assert samples[0].length == 13
    assert samples[0].prompt == (
        "Please answer the following questions based on the given article.\n\nArticle: Many "
        "people say so. David Beckham is the greatest footballer. Nobody disagrees.\n\nPlease "
        "answer the following questions based on the above article.\n\nQuestion: Who is the "
        "greatest footballer?\nAnswer:"
    )
    assert problems == [f"{path}:2: field 'answers' must be a non-empty list of strings"]
    zh, problems = tasks.read_samples(tasks.LVEVAL, FIXTURES / "lveval" / "cmrc_mixup_128k.jsonl")
    assert not problems and zh[0].prompt.startswith("请根据下面给定的文章回答问题")
    assert "文章：北京是中国的首都。\n\n现在请基于上述文章" in zh[0].prompt


def test_longbench_and_infinitebench_loaders():
    hotpot = FIXTURES / "longbench" / "hotpotqa.jsonl"
    samples, problems = tasks.read_samples(tasks.LONGBENCH, hotpot)
    assert len(samples) == 2 and samples[1].answers == ["Denmark", "Helsingør, Denmark"]
    assert samples[0].prompt.endswith("Question: Who wrote Hamlet?\nAnswer:")
    assert len(problems) == 1 and problems[0].startswith(f"{hotpot}:3: invalid JSON")
    book = FIXTURES / "infinitebench" / "longbook_qa_eng.jsonl"
    samples, problems = tasks.read_samples(tasks.INFINITEBENCH, book)
    assert samples[0].answers == ["Moby Dick"] and samples[0].dataset == "longbook_qa_eng"
    assert samples[0].prompt.endswith("Question: What was the whale's name?\n\nBe very concise.")
    assert problems == [f"{book}:2: a record must be a JSON object"]
    # a file named after no dataset of the benchmark: the error names the known ones
    _, problems = tasks.read_samples(tasks.INFINITEBENCH, hotpot)
    assert "dataset 'hotpotqa' is not one of infinitebench's" in problems[0]


def test_truncation_as_the_reference():
    tokenizer, prompt = ByteTokenizer(), "abcdefghij"
    middle = tasks.LVEVAL
    assert tasks.truncate_prompt(tokenizer, prompt, middle, 10, 64) == (prompt, False)
    assert tasks.truncate_prompt(tokenizer, prompt, middle, 4, 64) == ("abij", True)
    front = tasks.LONGBENCH  # keeps the last max_length - max_gen tokens
    assert tasks.truncate_prompt(tokenizer, prompt, front, 4, 1) == ("hij", True)
    assert tasks.truncate_prompt(tokenizer, prompt, front, 12, 5) == (prompt, False)
    # a max_length that would leave no prompt (ids[-(4 - 5):] kept nearly all of it)
    with pytest.raises(ValueError, match=r"--max_length 5 leaves no prompt: longbench keeps it "
                                         r"less the 5 new tokens; give at least 6"):  # fmt: skip
        tasks.truncate_prompt(tokenizer, prompt, front, 5, 5)
    with pytest.raises(ValueError, match=r"--max_length 1 .* give at least 2"):
        tasks.truncate_prompt(tokenizer, prompt, middle, 1, 64)  # ids[:0] + ids[-0:]: all of it


def test_chat_template_follows_the_reference_rule(qwen25_tokenizer_dir):
    tokenizer = HFTokenizer.from_dir(qwen25_tokenizer_dir)
    assert tasks.uses_chat("qwen2.5-3b-ahn-gdn", "auto")
    assert not tasks.uses_chat("Qwen2.5-3B-Instruct", "auto")  # the reference's substring
    assert tasks.uses_chat("Qwen2.5-3B-Instruct", "on")
    assert not tasks.uses_chat("qwen2.5", "off")
    ids = tasks.prompt_ids(tokenizer, "Who?", chat=True)
    assert tokenizer.decode(ids) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tasks.prompt_ids(tokenizer, "Who?", chat=False) == tokenizer.encode("Who?")
    assert not tasks.LONGBENCH.datasets["triviaqa"].chat  # few-shot: raw prompt


def test_lveval_length_levels_are_scored_apart(tmp_path):
    """The reference's LV-Eval scorer reports each file (`factrecall_en_16k`,
    `factrecall_en_128k`) as its own column: two levels of one dataset are never pooled."""
    fixture = (FIXTURES / "lveval" / "factrecall_en_128k.jsonl").read_text()
    for level in ("16k", "128k"):
        text = fixture.replace("factrecall_en_128k", f"factrecall_en_{level}")  # the field too
        (tmp_path / f"factrecall_en_{level}.jsonl").write_text(text)
    records = []
    for level, score in (("16k", 1.0), ("128k", 0.0)):
        samples, _ = tasks.read_samples(tasks.LVEVAL, tmp_path / f"factrecall_en_{level}.jsonl")
        assert {(s.dataset, s.level) for s in samples} == {("factrecall_en", level)}
        records += [{"dataset": s.dataset, "level": s.level, "score": score} for s in samples]
    records.append({"dataset": "hotpotqa", "score": 0.5})  # LongBench: no level
    summary = report.summarize("longbench", records)
    assert summary["datasets"] == {
        "factrecall_en_128k": {"samples": 2, "score": 0.0},
        "factrecall_en_16k": {"samples": 2, "score": 100.0},
        "hotpotqa": {"samples": 1, "score": 50.0},
    }
    assert summary["average"] == 50.0
    assert tasks.length_level("hotpotqa") is None and tasks.length_level("cmrc_mixup_64k") == "64k"


def test_perplexity_buckets_start_where_the_run_s_bucket_puts_them():
    """--bucket 30 over 65 tokens: buckets of 29, 30 and 5 predicted positions start at 0, 30 and
    60 (the summary derived 22 positions a bucket from their count, and put them at 0/22/44)."""
    records = [{"tokens": 65, "bucket_nll": [1.0, 2.0, 3.0], "bucket_tokens": [29, 30, 5]}] * 2
    summary = report.summarize("perplexity", records, bucket=30)
    assert [b["start"] for b in summary["buckets"]] == [0, 30, 60]


def test_the_grid_table_prints_one_decimal_and_marks_rows_missing_a_depth():
    """12.5 printed as 12.5 (`:.0f` rounded it to 12, 37.5 to 38), "all" from the unrounded cells,
    and a length missing a depth starred."""
    records = [
        {"context_length": 100, "depth": d, "score": float(i == 0), "dataset": "passkey"}
        for d in (0.0, 1.0)
        for i in range(8)
    ] + [{"context_length": 200, "depth": 0.0, "score": s, "dataset": "passkey"} for s in (0, 1)]
    records[8]["score"] = records[9]["score"] = records[10]["score"] = 1.0  # depth 1: 3/8
    summary = report.summarize("passkey", records)
    assert summary["accuracy"]["100"] == {"0": 12.5, "1": 37.5, "all": 25.0}
    text = report.markdown_table(summary)
    assert "| 100 | 12.5 | 37.5 | 25.0 |" in text
    assert "| 200 * | 50.0 | n/a | 50.0 |" in text
    # rounded once: 6 of 13 is 46.15...% -> 46.2 (stored as 46.15, the float under it gave 46.1)
    thirteen = [{"context_length": 300, "depth": 0.0, "score": float(i < 6), "dataset": "passkey"}
                for i in range(13)]  # fmt: skip
    assert "| 300 | 46.2 | 46.2 |" in report.markdown_table(report.summarize("passkey", thirteen))


def test_figure_names_and_settings_line_carry_the_variant():
    settings = {"task": "niah_multikey", "model": "/m/Qwen2.5-3B", "ahn": None, "mode": "ahn",
                "window": 64, "sinks": 4, "dtype": "bfloat16", "decode": "exact", "chat": True,
                "max_new_tokens": 128, "max_length": None,
                "extra": {"seed": 0, "keys": 4, "values": 1, "queries": 1, "key_type": "words",
                          "value_type": "numbers", "haystack": "needle"}}  # fmt: skip
    assert figures.variant_name(settings) == "niah_multikey_haystack-needle"
    assert figures.variant_name({**settings, "extra": {}}) == "niah_multikey"
    line = report.settings_line(settings)
    assert line.startswith("settings: task niah_multikey, model Qwen2.5-3B, ahn none, mode ahn")
    assert "W 64, S 4, dtype bfloat16, decode exact, chat on" in line and "seed 0" in line


def test_the_file_name_gives_the_level_where_the_records_name_the_dataset_only(tmp_path):
    """As the reference's LV-Eval scorer (its eval.py names each score after the file): records
    whose "dataset" is `factrecall_en` in `factrecall_en_16k.jsonl` are the 16k level."""
    fixture = (FIXTURES / "lveval" / "factrecall_en_128k.jsonl").read_text()
    (tmp_path / "factrecall_en_16k.jsonl").write_text(fixture.replace("_128k", ""))
    samples, _ = tasks.read_samples(tasks.LVEVAL, tmp_path / "factrecall_en_16k.jsonl")
    assert {(s.dataset, s.level) for s in samples} == {("factrecall_en", "16k")}
    (tmp_path / "mine.jsonl").write_text(fixture)  # a file named otherwise: the records' field
    samples, _ = tasks.read_samples(tasks.LVEVAL, tmp_path / "mine.jsonl")
    assert {(s.dataset, s.level) for s in samples} == {("factrecall_en", "128k")}
    # a record written before (no level) by a run this one resumes: reported under its file's
    old = {"id": "factrecall_en_16k:3", "dataset": "factrecall_en", "score": 1.0}
    assert tasks.report_name(old) == "factrecall_en_16k"
    assert tasks.report_name({"id": "hotpotqa:3", "dataset": "hotpotqa"}) == "hotpotqa"


def test_only_a_trailing_length_level_is_cut_from_a_dataset_name(tmp_path):
    """`hotpotqa_task.jsonl` is no LongBench hotpotqa file (the reference's `_.{1,3}k` split would
    read it as one, "_task" matching): refused, naming the whole name."""
    assert tasks.dataset_key("loogle_SD_mixup_16k") == "loogle_SD_mixup"
    assert tasks.length_level("loogle_SD_mixup_16k") == "16k"
    for name in ("hotpotqa_task", "longbook_qa_eng", "factrecall_en_16kb"):
        assert (tasks.dataset_key(name), tasks.length_level(name)) == (name, None)
    path = tmp_path / "hotpotqa_task.jsonl"
    path.write_text(json.dumps({"context": "c", "input": "q", "answers": ["a"]}) + "\n")
    samples, problems = tasks.read_samples(tasks.LONGBENCH, path)
    assert not samples and "dataset 'hotpotqa_task' is not one of longbench's" in problems[0]


def test_a_missing_field_is_named_as_missing(tmp_path):
    path = tmp_path / "hotpotqa.jsonl"
    path.write_text(
        '{"input": "q", "answers": ["a"]}\n{"input": "q", "context": 3, "answers": ["a"]}\n'
    )
    _, problems = tasks.read_samples(tasks.LONGBENCH, path)
    assert problems == [f"{path}:1: field 'context' is missing",
                        f"{path}:2: field 'context' must be a string"]  # fmt: skip


def test_the_memory_figure_models_layers_kept_as_full_attention(tmp_path):
    """Their cache grows with the context: the cost model needs max_length (the figure raised)."""
    from shared import tiny_config

    from ahn_jax.evaluation import results as results_lib

    config = tiny_config(vocab_size=256, ahn_type="gdn", full_attention_layers=(0,))
    values = dict(task="passkey", model="/m/tiny", ahn=None, mode="ahn", window=8, sinks=2,
                  max_length=None, max_new_tokens=None, chat=False, dtype="float32",
                  extra={})  # fmt: skip
    settings = dataclasses.asdict(results_lib.Settings(**values))
    record = dict(id="100-0.5-0", dataset="passkey", context_length=100, depth=0.5, score=1.0,
                  prompt_tokens=100, cache_tokens=108, cache_bytes=1000, batch_size=1,
                  max_new_tokens=8)  # fmt: skip
    report.write_report(tmp_path, settings, [record], config)
    assert (tmp_path / "memory_by_length.png").stat().st_size > 0
