"""RULER's NIAH variants: prompts as RULER's niah.py builds them, exact lengths, seeded cells,
string_match_all scoring, and the `evaluate` run end to end."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from shared import save_tiny_qwen2, write_qwen25_tokenizer

from ahn_jax.config import load_config_file, validate_config
from ahn_jax.evaluation import metrics, ruler, runner
from ahn_jax.model.layerwise import for_decoding
from ahn_jax.model.transformer import init_model
from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer

ROOT = Path(__file__).parents[2]
NUMBER, WORD = re.compile(r"\d{7}"), re.compile(r"[a-z]+-[a-z]+")
NEEDLE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _tokenizers(qwen25_tokenizer_dir):
    # byte prompts hold fewer haystack pieces per token, so they need more tokens
    return [
        (ByteTokenizer(), [1400, 1700]),
        (HFTokenizer.from_dir(qwen25_tokenizer_dir), [380, 450]),
    ]


def _needle(key, value, kind="numbers"):
    return f"One of the special magic {kind} for {key} is: {value}."


def test_variants_default_to_rulers_needle_counts():
    # scripts/synthetic.yaml: num_needle_k / num_needle_v / num_needle_q; k raised to q
    got = {task: ruler.make_config(task) for task in ruler.VARIANTS}
    assert [(c.keys, c.values, c.queries) for c in got.values()] == [
        (4, 1, 1),
        (1, 4, 1),
        (4, 1, 4),
    ]
    assert {(c.key_type, c.value_type, c.haystack) for c in got.values()} == {
        ("words", "numbers", "noise")
    }
    assert ruler.make_config("niah_multiquery", queries=6).keys == 6
    assert ruler.make_config("niah_multikey", keys=2, key_type="uuids").key_type == "uuids"
    with pytest.raises(ValueError, match="--niah_values"):
        ruler.make_config("niah_multivalue", values=-1)
    with pytest.raises(ValueError, match="--niah_haystack"):
        ruler.make_config("niah_multikey", haystack="essay")


@pytest.mark.parametrize("task", list(ruler.VARIANTS))
def test_prompts_are_exact_seeded_and_independent_of_the_grid(task, qwen25_tokenizer_dir):
    config = ruler.make_config(task)
    for tokenizer, lengths in _tokenizers(qwen25_tokenizer_dir):
        for chat in (False, True):
            args = (tokenizer, config, lengths, [0.0, 0.4, 1.0], 2)
            first = ruler.niah_samples(*args, seed=7, task=task, chat=chat)
            assert first == ruler.niah_samples(*args, seed=7, task=task, chat=chat)
            assert [len(s.ids) for s in first] == [s.length for s in first]
            assert {s.length for s in first} == set(lengths)
            assert len({s.answers for s in first}) == len(first)  # every cell draws its own
            other = ruler.niah_samples(*args, seed=8, task=task, chat=chat)
            assert [s.answers for s in first] != [s.answers for s in other]
            alone = ruler.niah_samples(tokenizer, config, [lengths[1]], [1.0], 2, seed=7,
                                       task=task, chat=chat)  # fmt: skip
            assert alone == [s for s in first if s.length == lengths[1] and s.depth == 1.0]


def _split(text, config, queries, chat=False):
    """The haystack lines between RULER's instruction and question, checking both."""
    head, question, prefix = ruler.prompt_texts(config, queries, chat)
    assert text.startswith(head) and text.endswith(question + prefix)
    haystack = text[len(head) : -len(question + prefix)]
    assert haystack.endswith("\n")  # the question starts a line, as in RULER's template
    return haystack.removesuffix("\n").split("\n")


@pytest.mark.parametrize("task", list(ruler.VARIANTS))
def test_needles_sit_where_rulers_template_puts_them(task):
    config = ruler.make_config(task)
    tokenizer = ByteTokenizer()
    block_orders = []
    for sample in ruler.niah_samples(tokenizer, config, [1500], [0.0, 0.5, 1.0], 3, seed=1):
        text = tokenizer.decode(sample.ids)
        lines = _split(text, config, sample.queries)
        # the context is RULER's: noise sentences and needles joined by "\n" (the last cut short)
        assert all(line == ruler.NOISE or NEEDLE.fullmatch(line) for line in lines[:-1])
        assert ruler.NOISE.startswith(lines[-1]) or NEEDLE.fullmatch(lines[-1])
        needles = {i: NEEDLE.fullmatch(line).groups() for i, line in enumerate(lines)
                   if NEEDLE.fullmatch(line)}  # fmt: skip
        assert len(needles) == config.keys * config.values
        keys = {key for key, _ in needles.values()}
        assert len(keys) == config.keys and set(sample.queries) <= keys
        assert len(sample.queries) == config.queries
        assert len(sample.answers) == config.queries * config.values
        asked = sorted(i for i, (key, _) in needles.items() if key in sample.queries)
        assert sorted(needles[i][1] for i in asked) == sorted(sample.answers)
        assert all(NUMBER.fullmatch(a) for a in sample.answers)
        for key in sample.queries:  # asked in the question and the answer prefix
            whole_key = rf"(?<![a-z]){re.escape(key)}(?![a-z])"  # not "old-fox" in "cold-fox"
            assert len(re.findall(whole_key, text)) == 2 + sum(
                key == k for k, _ in needles.values()
            )
        # the asked-for needles form one block, one noise sentence apart, whose start is the
        # depth's share of the places between noise sentences (rounded down)
        assert asked == list(range(asked[0], asked[0] + 2 * len(asked), 2))
        noise_before = lines[: asked[0]].count(ruler.NOISE)
        places = lines.count(ruler.NOISE) + 1
        assert noise_before == int(sample.depth * (places - len(asked)))
        block_orders.append([needles[i][1] for i in asked] == list(sample.answers))
    if len(sample.answers) > 1:  # the block is shuffled, as RULER shuffles its needles
        assert not all(block_orders)


def test_template_is_rulers_singular_and_plural():
    single = ruler.prompt_texts(ruler.make_config("niah_multikey"), ["a-b"], chat=False)
    assert single == (
        "A special magic number is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the number afterwards.\n",
        "What is the special magic number for a-b mentioned in the provided text?",
        " The special magic number for a-b mentioned in the provided text is",
    )
    many = ruler.prompt_texts(ruler.make_config("niah_multiquery"), ["a", "b", "c"], chat=True)
    assert many[0].startswith("<|im_start|>system\n") and many[0].endswith(
        "<|im_start|>user\nSome special magic numbers are hidden within the following text. Make "
        "sure to memorize it. I will quiz you about the numbers afterwards.\n"
    )
    assert many[1] == (
        "What are all the special magic numbers for a, b, and c mentioned in the provided text?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        many[2] == " The special magic numbers for a, b, and c mentioned in the provided text are"
    )


def test_words_uuids_and_a_haystack_of_needles(qwen25_tokenizer_dir):
    tokenizer = HFTokenizer.from_dir(qwen25_tokenizer_dir)
    config = ruler.make_config("niah_multikey", keys=1, key_type="uuids", value_type="words",
                               haystack="needle")  # fmt: skip
    for sample in ruler.niah_samples(tokenizer, config, [600, 700], [0.0, 0.7], 2, seed=3):
        assert len(sample.ids) == sample.length
        assert UUID.fullmatch(sample.queries[0]) and WORD.fullmatch(sample.answers[0])
        lines = _split(tokenizer.decode(sample.ids), config, sample.queries)
        # RULER's "needle" haystack (multikey_2/3): every line a needle, one of them the asked key
        assert all(line.startswith("One of the special magic words for ") for line in lines[:-1])
        needle = _needle(sample.queries[0], sample.answers[0], "words")
        assert lines.count(needle) == 1
        assert sum(sample.queries[0] in line for line in lines) == 1
        assert len({line.split(" for ")[1].split(" ")[0] for line in lines[:-1]}) > 5


@pytest.mark.parametrize("haystack", ruler.HAYSTACKS)
def test_prompts_tokenise_as_their_whole_text(qwen25_tokenizer_dir, haystack):
    """The pieces carry the "\n" after them, so the prompt's tokens are those of its text (Qwen
    merges "." and "\n" into one token: pieces tokenised with the "\n" before them gave ~4%
    fewer tokens on re-encoding, so less text per length than RULER's); the one exception, by at
    most a token, is where the haystack is cut short."""
    tokenizer = HFTokenizer.from_dir(qwen25_tokenizer_dir)
    config = ruler.make_config("niah_multivalue", haystack=haystack)
    samples = ruler.niah_samples(tokenizer, config, [900, 1000], [0.0, 0.5, 1.0], 2, seed=4)
    again = [tokenizer.encode(tokenizer.decode(s.ids)) for s in samples]
    assert all(abs(len(a) - len(s.ids)) <= 1 for a, s in zip(again, samples, strict=True))
    assert sum(a == s.ids for a, s in zip(again, samples, strict=True)) >= len(samples) // 2


def test_too_short_a_length_names_the_flag():
    config = ruler.make_config("niah_multikey")
    with pytest.raises(ValueError, match="--lengths 300 is too short"):
        ruler.niah_samples(ByteTokenizer(), config, [300], [0.5], 1, seed=0)
    with pytest.raises(ValueError, match="--lengths 700 is too short: .* places for 4 needles"):
        ruler.niah_samples(ByteTokenizer(), config, [700], [0.5], 1, seed=0)


def test_string_match_all_on_hand_made_predictions():
    answers = ["1234567", "7654321", "Brave-Tiger", "2222222"]
    everything = "They are 1234567, 7654321, brave-tiger and 2222222."
    assert metrics.string_match_all(everything, answers) == 1.0
    assert metrics.string_match_all("1234567 and BRAVE-TIGER", answers) == 0.5
    assert metrics.string_match_all("nothing here", answers) == 0.0
    assert metrics.string_match_all("123456", ["1234567"]) == 0.0
    record = {"answers": answers[:2]}
    assert runner.score_prediction("niah_multivalue", record, " 7654321.") == 0.5


def test_evaluate_runs_a_niah_variant_end_to_end_and_guards_settings(tmp_path):
    model_dir = tmp_path / "qwen2-tiny"  # "qwen2": --chat=auto applies the chat template
    save_tiny_qwen2(model_dir, vocab_size=151936, hidden_size=32, intermediate_size=48)
    write_qwen25_tokenizer(model_dir)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ahn_jax.evaluate", f"--model={model_dir}",
               "--task=niah_multivalue", "--lengths=300,340", "--depths=0,1", "--samples=1",
               "--mode=swa", "--window=64", "--sinks=4", "--max_new_tokens=3",
               f"--out={out}"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert "chat template on, float32, decode exact" in first.stderr
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [
        f"niah_multivalue:{n}:{d}:0" for n in (300, 340) for d in (0, 1)
    ]
    for r in records:
        assert r["prompt_tokens"] == r["context_length"] and r["max_new_tokens"] == 3
        assert len(r["answers"]) == 4 and len(r["queries"]) == 1
        assert r["score"] == metrics.string_match_all(r["pred"], r["answers"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"300", "340"}
    assert set(summary["accuracy"]["300"]) == {"0", "1", "all"}
    assert "niah_multivalue score (values recalled) (%)" in (out / "summary.md").read_text()
    assert summary["settings"]["extra"]["values"] == 4 and summary["settings"]["dtype"] == "float32"
    assert (out / "summary.md").read_text().startswith("settings: task niah_multivalue, model ")
    for name in ("niah_multivalue.png", "memory_by_length.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["decode"] == "exact" and saved["dtype"] == "float32"
    assert saved["extra"]["values"] == 4 and saved["extra"]["haystack"] == "noise"
    before = (out / "predictions.jsonl").read_text()
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert (out / "predictions.jsonl").read_text() == before  # nothing was scored twice
    for flag, change in (
        ("--niah_values=2", "extra: "),
        ("--dtype=bfloat16", "dtype: 'float32' -> 'bfloat16'"),
        # the reference's sliding-window baseline drops no cache entry: refused before resuming
        ("--decode=reference", "mode 'swa' takes decode \"exact\""),
    ):
        changed = subprocess.run([*command, flag], capture_output=True, text=True, cwd=ROOT)
        assert changed.returncode != 0 and change in changed.stderr, changed.stderr
    short = subprocess.run([*command[:-1], "--lengths=200", f"--out={tmp_path / 'short'}"],
                           capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert short.returncode != 0 and "--lengths 200 is too short" in short.stderr
    assert not (tmp_path / "short" / "run.json").exists()  # refused before anything was written


def test_runner_scores_niah_records_and_passes_the_decode_setting(tmp_path, monkeypatch):
    from ahn_jax.evaluation import results as results_lib

    tokenizer = ByteTokenizer()
    extra = dict(lengths=[1500], depths=[0.0, 1.0], samples=1, seed=0,
                 **vars(ruler.make_config("niah_multivalue")))  # fmt: skip
    settings = results_lib.Settings(
        task="niah_multivalue", model="m", ahn=None, mode="ahn", window=8, sinks=2,
        max_length=None, max_new_tokens=None, chat=False, dtype="float32", extra=extra,
        decode="reference",
    )  # fmt: skip
    prompts = runner.ruler_prompts(tokenizer, settings)
    assert [p.max_new for p in prompts] == [ruler.MAX_NEW_TOKENS] * 2  # RULER's 128
    seen = []

    class FakeCache:
        def nbytes(self):
            return 0

    def fake_generate(model, batch, on_cache, **kwargs):  # recalls all values, then half of them
        seen.append(kwargs["decode"])
        # the runner hands over the per-layer copy it made once: generate keeps it as it is
        assert for_decoding(model) is model
        on_cache(FakeCache())
        recalled = [prompts[0].record["answers"], prompts[1].record["answers"][:2]]
        return [tokenizer.encode(" " + ", ".join(r)) for r in recalled]

    monkeypatch.setattr(runner.generate_lib, "generate", fake_generate)
    monkeypatch.setattr(runner.generate_lib, "stop_ids", lambda tokenizer: [])
    results_lib.check_settings(tmp_path, settings)
    model = init_model(validate_config(load_config_file(ROOT / "configs" / "tiny_gdn.py")))
    runner.run_generation(model, tokenizer, prompts, settings, tmp_path, batch_size=2)
    scores = {r["depth"]: r["score"] for r in results_lib.read_results(tmp_path)}
    assert scores == {0.0: 1.0, 1.0: 0.5} and seen == ["reference"]


def test_chat_prompts_take_the_checkpoints_default_system_prompt(qwen25_tokenizer_dir):
    """As the benchmarks' prompts (tokenizer.apply_chat_template): a Qwen2 checkpoint's template
    inserts "You are a helpful assistant.", not Qwen2.5's system prompt."""
    from ahn_jax.tokenizer import QWEN2_DEFAULT_SYSTEM

    tokenizer = HFTokenizer.from_dir(qwen25_tokenizer_dir)
    tokenizer.default_system = QWEN2_DEFAULT_SYSTEM
    config = ruler.make_config("niah_multikey")
    (sample,) = ruler.niah_samples(tokenizer, config, [400], [0.5], 1, seed=0, chat=True)
    text = tokenizer.decode(sample.ids)
    assert text.startswith(f"<|im_start|>system\n{QWEN2_DEFAULT_SYSTEM}<|im_end|>\n")
