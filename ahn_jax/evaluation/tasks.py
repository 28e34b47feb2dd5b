"""LV-Eval, LongBench and InfiniteBench as the AHN evaluation runs them: datasets, prompt
templates, truncation, generation lengths, chat-template rule, prediction clean-up and metrics.

Every setting follows the reference evaluation (ByteDance-Seed/AHN `eval/`, itself LV-Eval's and
LongBench's scripts); docs/evaluation_sources.md gives each rule's source and where the AHN
evaluation differs from the upstream benchmarks (for example, InfiniteBench run through the
LongBench script: front truncation, ROUGE-L).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ahn_jax.evaluation import metrics as m
from ahn_jax.jsonl import read_jsonl

_QA_ONE_PASSAGE = (
    "Please answer the following question based on the given passages. Questions and answers are "
    "only relevant to one passage. Only give me the answer and do not output any other explanation "
    "and evidence.\n\nArticle: {context}\n\nPlease answer the following question based on the "
    "above passages. Questions and answers are only relevant to one passage. Only give me the "
    "answer and do not output any other explanation and evidence.\n\nQuestion: {input}\nAnswer:"
)
_ZH_ONE_PASSAGE = (
    "请根据下面给定的文章回答问题，问题和答案只与其中一篇文章有关。\n\n文章：{context}\n\n{now}上述文章回答下面的问题，"
    "问题和答案只与其中一篇文章有关。\n\n问题：{input}\n回答："
)
_HOTPOT_MUSIQUE = (
    "Answer the question based on the given passages. Only give me the answer and do not output "
    "any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based "
    "on the given passages. Only give me the answer and do not output any other words.\n\n"
    "Question: {input}\nAnswer:"
)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset's reference settings. `metric(prediction, answer, keywords)` scores in [0, 1]."""

    prompt: str
    max_gen: int
    metric: Callable[[str, str, str | None], float]
    chat: bool = True  # the reference skips the chat template for a few few-shot datasets


def _plain(metric):
    return lambda prediction, answer, keywords: metric(prediction, answer)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    datasets: Mapping[str, Dataset]
    truncation: str  # "middle": first and last max_length/2 tokens; "front": the last tokens
    max_length: int  # the reference's prompt budget in tokens
    window: int  # the reference's sliding window and sinks for AHN and sinks + window
    sinks: int
    answers_field: str
    first_answer_only: bool  # LV-Eval scores answers[0] only; LongBench the best answer
    clean_predictions: bool  # LongBench's eval.py cuts predictions at echoed prompt markers


LVEVAL = Benchmark(
    name="lveval",
    datasets={
        "hotpotwikiqa_mixup": Dataset(
            "Answer the question based on the given passages. Questions and answers are only "
            "relevant to some passages. Only give me the answer and do not output any other "
            "explanation and evidence.\n\nArticle: {context}\n\nPlease answer the following "
            "question based on the above passages. Questions and answers are only relevant to some "
            "passages. Only give me the answer and do not output any other explanation and "
            "evidence.\n\nQuestion: {input}\nAnswer:",
            64,
            m.qa_f1_score_with_gold_ans,
        ),
        **{
            name: Dataset(_QA_ONE_PASSAGE, 64, m.qa_f1_score_with_gold_ans)
            for name in (
                "loogle_SD_mixup",
                "loogle_CR_mixup",
                "loogle_MIR_mixup",
                "multifieldqa_en_mixup",
            )
        },
        "multifieldqa_zh_mixup": Dataset(
            "请阅读以下文章并用中文回答问题，问题和答案只与其中一篇文章有关。只需要直接给出问题的答案，不要输出其他任何解释和证据。"
            "\n\n文章：{context}\n\n请基于上面的文章回答下面的问题，问题和答案只与其中一篇文章有关。"
            "只需要直接给出问题的答案，不要输出其他任何解释和证据。\n\n问题：{input}\n回答：",
            64,
            m.qa_f1_zh_score_with_gold_ans,
        ),
        "factrecall_en": Dataset(
            "Please answer the following questions based on the given article.\n\nArticle: "
            "{context}\n\nPlease answer the following questions based on the above article.\n\n"
            "Question: {input}\nAnswer:",
            16,
            _plain(m.qa_f1_score),
        ),
        "factrecall_zh": Dataset(
            "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n现在请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
            16,
            _plain(m.qa_f1_zh_score),
        ),
        "cmrc_mixup": Dataset(
            _ZH_ONE_PASSAGE.replace("{now}", "现在请基于"), 64, m.qa_f1_zh_score_with_gold_ans
        ),
        "lic_mixup": Dataset(
            _ZH_ONE_PASSAGE.replace("{now}", "请现在基于"), 64, m.qa_f1_zh_score_with_gold_ans
        ),
        "dureader_mixup": Dataset(
            _ZH_ONE_PASSAGE.replace("{now}", "现在请基于"), 64, _plain(m.rouge_zh_score_blacklist)
        ),
    },
    truncation="middle",
    max_length=256_000,
    window=32_640,
    sinks=128,
    answers_field="answers",
    first_answer_only=True,
    clean_predictions=False,
)

LONGBENCH = Benchmark(
    name="longbench",
    datasets={
        "narrativeqa": Dataset(
            # "asconcisely" is the prompt file's own typo, kept as the reference runs it
            "You are given a story, which can be either a novel or a movie script, and a question. "
            "Answer the question asconcisely as you can, using a single phrase if possible. Do not "
            "provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the "
            "story asconcisely as you can, using a single phrase if possible. Do not provide any "
            "explanation.\n\nQuestion: {input}\n\nAnswer:",
            128,
            _plain(m.qa_f1_score),
        ),
        "hotpotqa": Dataset(_HOTPOT_MUSIQUE, 32, _plain(m.qa_f1_score)),
        "musique": Dataset(_HOTPOT_MUSIQUE, 32, _plain(m.qa_f1_score)),
        "dureader": Dataset(
            "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
            128,
            _plain(m.rouge_zh_score),
        ),
        "qmsum": Dataset(
            "You are given a meeting transcript and a query containing a question or instruction. "
            "Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer "
            "the query based on the above meeting transcript in one or more sentences.\n\nQuery: "
            "{input}\nAnswer:",
            500,
            _plain(m.rouge_score),
        ),
        "triviaqa": Dataset(
            "Answer the question based on the given passage. Only give me the answer and do not "
            "output any other words. The following are some examples.\n\n{context}\n\n{input}",
            32,
            _plain(m.qa_f1_score),
            chat=False,
        ),
    },
    truncation="front",
    max_length=32_000,
    window=8_064,
    sinks=128,
    answers_field="answers",
    first_answer_only=False,
    clean_predictions=True,
)

_BOOK_QA = (
    "Read the book below and answer a question.\n\n{context}\n\nQuestion: {input}\n\n"
    "Be very concise."
)
INFINITEBENCH = Benchmark(
    name="infinitebench",
    datasets={  # the reference uses the English prompt for the Chinese books too
        "longbook_qa_eng": Dataset(_BOOK_QA, 256, _plain(m.rouge_score)),
        "longbook_qa_chn": Dataset(_BOOK_QA, 256, _plain(m.rouge_zh_score)),
    },
    truncation="front",
    max_length=128_000,
    window=32_640,
    sinks=128,
    answers_field="answer",
    first_answer_only=False,
    clean_predictions=True,
)

BENCHMARKS = {b.name: b for b in (LVEVAL, LONGBENCH, INFINITEBENCH)}


def clean_prediction(prediction: str, dataset: str) -> str:
    """LongBench's eval.py: cut where the model starts echoing a prompt, then per-dataset rules."""
    for marker in (".assistant", "\n\nQuestion", "</s>", "(Document", "\n\nAnswer", "(Passage"):
        prediction = prediction.split(marker)[0]
    prediction = prediction.strip()
    if dataset == "triviaqa":
        prediction = prediction.lstrip("\n").split("\n")[0]
    if dataset == "dureader":
        prediction = prediction.split("问题：")[0].strip()
    return prediction


def score(benchmark: Benchmark, dataset: str, prediction: str, answers, keywords) -> float:
    """One sample's score in [0, 1] as the benchmark's scorer computes it."""
    metric = benchmark.datasets[dataset].metric
    if benchmark.clean_predictions:
        prediction = clean_prediction(prediction, dataset)
    answers = answers[:1] if benchmark.first_answer_only else answers
    return max((metric(prediction, answer, keywords) for answer in answers), default=0.0)


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str
    dataset: str
    prompt: str  # the filled-in template, before truncation and chat template
    answers: list[str]
    keywords: str | None
    length: int | None  # the record's own length field (words or characters), if any
    level: str | None = None  # LV-Eval's length level ("128k"), reported apart (`report_name`)


# LV-Eval's file names end in a length level: `factrecall_en_128k` (16k ... 256k)
_LENGTH_LEVEL = re.compile(r"(?P<key>.+)_(?P<level>\d+k)")


def dataset_key(name: str) -> str:
    """The dataset whose prompt and metric apply: the name without a trailing LV-Eval length
    level (`factrecall_en_128k` -> `factrecall_en`), else the name. The reference's scorer cuts
    at the first `_.{1,3}k` anywhere (`re.split`): the same key for every LV-Eval and LongBench
    dataset, but `foo_task` would be read as dataset `foo`."""
    found = _LENGTH_LEVEL.fullmatch(name)
    return found["key"] if found else name


def length_level(name: str) -> str | None:
    """What `dataset_key` drops: `factrecall_en_128k` -> "128k"; None where nothing is."""
    found = _LENGTH_LEVEL.fullmatch(name)
    return found["level"] if found else None


def report_name(record: dict) -> str:
    """The name a scored record is reported under: its dataset with its length level, as the
    reference's LV-Eval scorer reports each file (`factrecall_en_16k` and `factrecall_en_128k`
    are two scores, never pooled)."""
    level = record.get("level")
    if not level and ":" in str(record.get("id", "")):
        # records written before the level came from the file name ("<file stem>:<line>")
        level = length_level(str(record["id"]).rsplit(":", 1)[0])
    return f"{record['dataset']}_{level}" if level else record["dataset"]


def read_samples(
    benchmark: Benchmark, path: Path, dataset: str | None = None
) -> tuple[list[Sample], list[str]]:
    """Samples of one JSONL file, and a message per malformed line (with its line number).

    The dataset is `dataset` if given, else each record's "dataset" field, else the file name."""
    samples, problems = [], []
    for number, record in read_jsonl(path, on_invalid=lambda e: problems.append(str(e))):
        try:
            samples.append(_sample(benchmark, record, number, path, dataset))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"{path}:{number}: {e}")
    return samples, problems


def _sample(benchmark, record, number, path, dataset) -> Sample:
    if not isinstance(record, dict):
        raise TypeError("a record must be a JSON object")
    full_name = dataset or record.get("dataset") or path.stem
    name = dataset_key(full_name)
    if name not in benchmark.datasets:
        raise ValueError(
            f"dataset {name!r} is not one of {benchmark.name}'s: {sorted(benchmark.datasets)} "
            "(set --dataset, or the record's 'dataset' field, or name the file after it)"
        )
    for field in ("context", "input"):
        if field not in record:
            raise TypeError(f"field {field!r} is missing")
        if not isinstance(record[field], str):
            raise TypeError(f"field {field!r} must be a string")
    answers = record.get(benchmark.answers_field)
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"field {benchmark.answers_field!r} must be a non-empty list of strings")
    keywords = record.get("answer_keywords")
    if isinstance(keywords, list):
        keywords = " ".join(str(k) for k in keywords)
    template = benchmark.datasets[name].prompt
    prompt = template.format(context=record["context"], input=record["input"])
    length = record.get("length")
    return Sample(
        id=f"{path.stem}:{number}",
        dataset=name,
        prompt=prompt,
        answers=answers,
        keywords=keywords if isinstance(keywords, str) else None,
        length=length if isinstance(length, int) else None,
        # the reference's scorer takes the level from the file's name (a record's "dataset" field
        # may name the dataset only): --dataset, then the file name, then the field
        level=next(filter(None, map(length_level, (dataset or "", path.stem, full_name))), None),
    )


def truncate_prompt(tokenizer, prompt: str, benchmark: Benchmark, max_length: int, max_gen: int):
    """The reference's truncation of the raw prompt, in text: (prompt, truncated?). ValueError
    for a `max_length` that would leave no prompt (front truncation keeps the last max_length -
    max_gen tokens, middle truncation max_length // 2 at each end)."""
    middle = benchmark.truncation == "middle"
    if max_length > 0 and (max_length < 2 if middle else max_length <= max_gen):
        least = 2 if middle else max_gen + 1
        kept = "half of it at each end" if middle else f"it less the {max_gen} new tokens"
        raise ValueError(
            f"--max_length {max_length} leaves no prompt: {benchmark.name} keeps {kept}; give at "
            f"least {least}"
        )
    ids = tokenizer.encode(prompt)
    if max_length <= 0 or len(ids) <= max_length:
        return prompt, False
    if middle:  # LV-Eval: no room is kept for the answer
        half = max_length // 2
        return _decode(tokenizer, ids[:half]) + _decode(tokenizer, ids[-half:]), True
    return _decode(tokenizer, ids[-(max_length - max_gen) :]), True


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def uses_chat(model_name: str, chat: str) -> bool:
    """--chat auto follows the reference: the Qwen chat template iff "qwen2" is in the model
    name (case-sensitive, so "Qwen2.5-3B" does not qualify; pass --chat=on)."""
    return chat == "on" or (chat == "auto" and "qwen2" in model_name)


def prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
    return tokenizer.encode(prompt)
