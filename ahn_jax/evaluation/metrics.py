"""The scoring functions of LV-Eval, LongBench and InfiniteBench, as the AHN evaluation runs them,
and RULER's string match.

Written from the metric definitions that LV-Eval and LongBench publish (docs/evaluation_sources.md
records every rule and where it comes from). ROUGE-L is pltrdy's `rouge` package itself and the
Chinese word splitting `jieba` itself, so scores match the reference's to the digit; everything
here is a pure function of strings, tested on hand-scored fixtures.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Sequence

# Words that do not count as matched answer keywords (LV-Eval's keyword-recall gate).
ABANDON_WORDS_EN = frozenset(
    str.split(
        "and to of in her was with for it from is that his he by she they or at because be on "
        "are their what as had were about being this who but have has when which does"
    )
)
ABANDON_WORDS_ZH = frozenset(
    str.split(
        "的 和 是 等 在 年 可以 为 与 ‰ 了 或 一种 月 c 至 日 有 进行 于 不 中 × 根据 小 由 "
        "亩 也 要 指 法 会 元 主要 以及 通过 首先 对 然后 号 以 所 后 丁 包括 无 将 用 能 形 "
        "方面 因素 位于 而 从 到 一定 用于 但 使用 让 具有 并 亿元 万元 上 类 基于 才 来 地 "
        "片 其他 个 或者 变得 时 给 你 使 条 受 已经 带 度"
    )
)
_ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『"
    "』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_EN_PUNCTUATION = frozenset(string.punctuation)
_ALL_PUNCTUATION = frozenset(string.punctuation + _ZH_PUNCTUATION)
# Keyword recall below which LV-Eval scores an answer 0, whatever its F1.
KEYWORD_GATE_EN, KEYWORD_GATE_ZH = 0.2, 0.4


def normalize_answer(text: str) -> str:
    """English: lower case; ASCII punctuation and articles removed; spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def normalize_zh_answer(text: str) -> str:
    """Chinese: lower case, ASCII and CJK punctuation and all whitespace removed."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ALL_PUNCTUATION).split())


def _jieba_words(text: str) -> list[str]:
    import jieba  # its dictionary loads on first use (~1 s), so only where Chinese is scored

    # its own logger tells each dictionary load at INFO, in the middle of the progress bar
    jieba.setLogLevel(logging.WARNING)

    return list(jieba.cut(text, cut_all=False))


def _zh_tokens(text: str) -> list[str]:
    return [t for t in (normalize_zh_answer(w) for w in _jieba_words(text)) if t]


def f1_score(prediction: Sequence[str], truth: Sequence[str]) -> float:
    """Token F1 with multiset overlap."""
    same = sum((Counter(prediction) & Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, truth: str) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(truth).split())


def qa_f1_zh_score(prediction: str, truth: str) -> float:
    return f1_score(_zh_tokens(prediction), _zh_tokens(truth))


def _keyword_recall(prediction_tokens, keyword_tokens, abandon) -> float:
    common = Counter(prediction_tokens) & Counter(keyword_tokens)
    return sum(n for word, n in common.items() if word not in abandon) / len(keyword_tokens)


def qa_f1_score_with_gold_ans(prediction: str, truth: str, keywords: str | None) -> float:
    """LV-Eval (English): F1, but 0 when the answer recalls < 20% of the keywords (stop words in
    the prediction do not count as recalled; they do count in the denominator)."""
    predicted = normalize_answer(prediction).split()
    if keywords:
        keyword_tokens = normalize_answer(keywords).split()
        if not keyword_tokens:  # the reference divides by zero here; no keyword means no gate
            return f1_score(predicted, normalize_answer(truth).split())
        if _keyword_recall(predicted, keyword_tokens, ABANDON_WORDS_EN) < KEYWORD_GATE_EN:
            return 0.0
    return f1_score(predicted, normalize_answer(truth).split())


def qa_f1_zh_score_with_gold_ans(prediction: str, truth: str, keywords: str | None) -> float:
    """LV-Eval (Chinese): F1 on jieba words, 0 below 40% keyword recall; without keywords the
    answer itself is the keyword set."""
    predicted = _zh_tokens(prediction)
    keyword_tokens = _zh_tokens(keywords or truth)
    if keyword_tokens and (
        _keyword_recall(predicted, keyword_tokens, ABANDON_WORDS_ZH) < KEYWORD_GATE_ZH
    ):
        return 0.0
    return f1_score(predicted, _zh_tokens(truth))


def rouge_score(prediction: str, truth: str) -> float:
    """ROUGE-L F of pltrdy's `rouge` (summary-level union LCS over "."-split sentences, words as
    sets); 0 where it raises (an empty side, or a sentence pair of ~1000+ words that exceeds its
    recursion), as in the reference."""
    from rouge import Rouge

    try:
        return Rouge().get_scores([prediction], [truth], avg=True)["rouge-l"]["f"]
    except Exception:  # noqa: BLE001 - the reference's bare except: any failure scores 0
        return 0.0


def rouge_zh_score(prediction: str, truth: str) -> float:
    """ROUGE-L on jieba words joined by spaces (punctuation kept)."""
    return rouge_score(" ".join(_jieba_words(prediction)), " ".join(_jieba_words(truth)))


def rouge_zh_score_blacklist(prediction: str, truth: str) -> float:
    """LV-Eval's dureader metric: ROUGE-L on normalised jieba words without Chinese stop words."""

    def words(text: str) -> str:
        tokens = (normalize_zh_answer(w) for w in _jieba_words(" ".join(_jieba_words(text))))
        return " ".join(t for t in tokens if t not in ABANDON_WORDS_ZH)

    return rouge_score(words(prediction), words(truth))


def first_integer(text: str) -> str | None:
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def passkey_exact_match(prediction: str, passkey: str) -> float:
    """1 if the first number the model writes is the pass key, else 0."""
    return float(first_integer(prediction) == passkey)


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's niah score: the fraction of the reference values found anywhere in the prediction
    (case-insensitive substring match; NVIDIA/RULER scripts/eval/synthetic/constants.py)."""
    text = prediction.lower()
    return sum(ref.lower() in text for ref in references) / len(references)
