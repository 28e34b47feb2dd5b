"""RULER's needle-in-a-haystack variants: multi-key, multi-value and multi-query NIAH.

Written from NVIDIA/RULER's `scripts/data/synthetic/niah.py`, its task template
(`scripts/data/synthetic/constants.py`, task "niah") and `scripts/synthetic.yaml`
(docs/evaluation.md, "RULER"). The needle, template, answer prefix, singular rewrite, key/value
kinds (7-digit numbers, adjective-noun words, uuids), query phrasing and answers are RULER's; the
haystack is its "noise" (one sentence repeated) or "needle" (distractor needles) kind, never the
Paul Graham essays (no downloads here). Unlike RULER, which scatters every needle at random, the
needles that answer the question sit together at a chosen depth (so scores form a length x depth
grid, as pass keys do); distractor needles are scattered at random as in RULER.

Each prompt is exactly `length` tokens (instruction, haystack pieces, needles, question and answer
prefix tokenised on their own and concatenated, the haystack cut to fit), so prompts of one length
batch together. A piece carries the "\n" that follows it in RULER's text, so that it tokenises as
the whole text would (Qwen's ".\n" is one token; pieces that began with their "\n" split it from
the ".", 4-5% fewer sentences per length and token pairs the model never saw). Every (length,
depth, index) cell draws from its own seeded generator: a sample does not change when other
lengths or depths are added.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

import numpy as np

from ahn_jax.evaluation import passkey
from ahn_jax.tokenizer import QWEN_DEFAULT_SYSTEM, user_turn_frame

# RULER's scripts/synthetic.yaml: (num_needle_k, num_needle_v, num_needle_q) of each variant
VARIANTS = {"niah_multikey": (4, 1, 1), "niah_multivalue": (1, 4, 1), "niah_multiquery": (1, 1, 4)}
NEEDLE_TYPES = ("words", "numbers", "uuids")
HAYSTACKS = ("noise", "needle")
MAX_NEW_TOKENS = 128  # RULER's tokens_to_generate for niah
TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
    "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all "
    "the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# RULER joins wonderwords' adjective and noun lists (not installed here); ours are shorter
_ADJECTIVES = tuple(
    str.split(
        "able acid angry bad bitter black blue brave bright broad broken calm cheap clean "
        "clever cold cool curly damp dark dear deep dry eager early easy empty fair false fancy "
        "fast fat fierce fine flat fresh funny gentle giant glad gold good grand gray great "
        "green happy hard heavy high hollow hot huge icy jolly kind large late lazy light "
        "little lively long loud low lucky mad modern narrow neat new nice noisy odd old open "
        "pink plain polite poor proud purple quick quiet rapid rare raw red rich ripe round "
        "rough royal sad safe salty sharp shiny short shy silent silly slow small smooth soft "
        "solid sour spicy steep sticky strong sweet swift tall tame tender thick thin tidy tiny "
        "tough ugly vast warm wet white wide wild wise witty young"
    )
)
_NOUNS = tuple(
    str.split(
        "actor airport anchor apple arrow baker balloon banana basket beach bell bicycle bird "
        "blanket boat bottle bridge brush bucket butter button cabin camera candle canoe carpet "
        "castle cat chair cherry circle cloud coat coffee comet cookie copper cotton crayon "
        "crown cup desk diamond dog donkey dragon drum eagle engine falcon feather fence field "
        "flute forest fox garden garlic giraffe glove grape guitar hammer harbor hat helmet "
        "honey horse island jacket jungle kettle kitten ladder lamp lemon lion mango marble "
        "meadow mirror monkey mountain needle ocean orange otter owl palace panda pencil pepper "
        "piano pillow planet pocket pony puzzle rabbit river robot rocket saddle salmon shadow "
        "sheep shovel silver spoon squirrel star stone sugar table teapot tiger tomato tower "
        "train tulip turtle valley violin wagon whale window wizard zebra"
    )
)


@dataclasses.dataclass(frozen=True)
class NiahConfig:
    """One variant's complexity, as RULER's niah.py arguments (num_needle_k/v/q, type_needle_k/v,
    type_haystack). `keys` counts every key with a needle, the asked ones included."""

    keys: int
    values: int
    queries: int
    key_type: str = "words"
    value_type: str = "numbers"
    haystack: str = "noise"

    def __post_init__(self):
        for flag, count in (
            ("keys", self.keys),
            ("values", self.values),
            ("queries", self.queries),
        ):
            if count < 1:
                raise ValueError(f"--niah_{flag} must be at least 1, got {count}")
        if self.queries > self.keys:
            raise ValueError(f"--niah_queries {self.queries} exceeds --niah_keys {self.keys}")
        for flag, kind in (("key_type", self.key_type), ("value_type", self.value_type)):
            if kind not in NEEDLE_TYPES:
                raise ValueError(f"--niah_{flag} must be one of {NEEDLE_TYPES}, got {kind!r}")
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"--niah_haystack must be one of {HAYSTACKS}, got {self.haystack!r}")


def make_config(task: str, keys=None, values=None, queries=None, **kinds) -> NiahConfig:
    """The variant's RULER settings, with any given count overriding; as RULER, the number of keys
    is raised to the number of queries (`args.num_needle_k = max(num_needle_k, num_needle_q)`)."""
    if task not in VARIANTS:
        raise ValueError(f"--task {task!r} is not a RULER NIAH variant ({', '.join(VARIANTS)})")
    k, v, q = VARIANTS[task]
    queries = queries or q
    keys = max(keys or k, queries)
    return NiahConfig(keys, values or v, queries, **{n: x for n, x in kinds.items() if x})


@dataclasses.dataclass(frozen=True)
class NiahSample:
    id: str
    length: int  # tokens in the prompt
    depth: float  # where the block of asked-for needles starts, as a fraction of the haystack
    queries: tuple[str, ...]  # the keys asked for, in the question's order
    answers: tuple[str, ...]  # every value of those keys (RULER's "outputs")
    ids: list[int]


def prompt_texts(
    config: NiahConfig,
    queries: Sequence[str],
    chat: bool,
    default_system: str = QWEN_DEFAULT_SYSTEM,
) -> tuple[str, str, str]:
    """(instruction, question, answer prefix) around the haystack, as RULER renders them: its
    template plus answer prefix, made singular when one value is asked for, with the chat template
    (if any; its system turn `default_system`, the checkpoint's) around the task and the answer
    prefix after the assistant header."""
    kind = config.value_type
    template, prefix = TEMPLATE, ANSWER_PREFIX
    if config.queries * config.values == 1:  # niah.py's rewrite, `are` -> `is` everywhere
        rewrite = (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer"))
        for old, new in rewrite:
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        kind = kind[:-1]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    head, question = template.format(type_needle_v=kind, query=query, context="\0").split("\0")
    opening, closing = user_turn_frame(default_system) if chat else ("", "")
    # the haystack's pieces each end with RULER's "\n" separator: the question gives up its own
    return (
        opening + head,
        question.removeprefix("\n") + closing,
        prefix.format(type_needle_v=kind, query=query),
    )


def niah_samples(
    tokenizer,
    config: NiahConfig,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples_per_cell: int,
    seed: int,
    *,
    task: str = "niah",
    chat: bool = False,
) -> list[NiahSample]:
    """`samples_per_cell` prompts for every (length, depth); the same arguments give the same
    samples. Raises ValueError (naming the flag) for a depth outside [0, 1] or a length too short
    to hold the needles."""
    noise = tokenizer.encode(NOISE + "\n")
    samples = []
    for length, depth, index, rng in passkey.grid_cells(lengths, depths, samples_per_cell, seed):
        queries, answers, ids = _prompt(tokenizer, config, rng, length, depth, noise, chat)
        name = f"{task}:{length}:{depth:g}:{index}"
        samples.append(NiahSample(name, length, depth, queries, answers, ids))
    return samples


def _prompt(tokenizer, config: NiahConfig, rng, length: int, depth: float, noise, chat: bool):
    """One cell's (queries, answers, token ids), the ids exactly `length` long."""
    keys = _distinct(rng, config.key_type, config.keys, set())
    taken, values = set(keys), []
    for _ in keys:
        values.append(_distinct(rng, config.value_type, config.values, taken))
        taken.update(values[-1])
    asked = [int(i) for i in rng.permutation(config.keys)[: config.queries]]  # random.sample
    queries = tuple(keys[i] for i in asked)
    answers = tuple(value for i in asked for value in values[i])

    block = [_needle(tokenizer, config, keys[i], value) for i in asked for value in values[i]]
    block = [block[i] for i in rng.permutation(len(block))]  # RULER shuffles the needles
    others = [
        _needle(tokenizer, config, keys[i], value)
        for i in range(config.keys)
        if i not in asked
        for value in values[i]
    ]
    texts = prompt_texts(config, queries, chat, tokenizer.default_system)
    head, question, prefix = (tokenizer.encode(t) for t in texts)
    n_filler = length - len(head) - len(question) - len(prefix) - sum(map(len, block + others))
    if n_filler < 0:
        raise ValueError(
            f"--lengths {length} is too short: instruction, needles and question take "
            f"{length - n_filler} tokens"
        )
    filler, bounds = _haystack(tokenizer, config, rng, n_filler, noise, set(keys))
    slots = len(bounds)  # a needle goes in between two haystack pieces
    if slots < len(block) + len(others):
        raise ValueError(
            f"--lengths {length} is too short: {n_filler} haystack tokens give {slots} places "
            f"for {len(block) + len(others)} needles"
        )
    start = int(depth * (slots - len(block)))  # the block starts at or before its depth
    at = {start + j: piece for j, piece in enumerate(block)}
    free = [s for s in range(slots) if s not in at]
    for slot, piece in zip(
        sorted(rng.choice(free, len(others), replace=False)), others, strict=True
    ):
        at[int(slot)] = piece
    ids, done = list(head), 0
    for slot in sorted(at):
        ids += filler[done : bounds[slot]] + at[slot]
        done = bounds[slot]
    ids += filler[done:] + question + prefix
    assert len(ids) == length, (len(ids), length)
    return queries, answers, ids


def _haystack(tokenizer, config: NiahConfig, rng, n_filler: int, noise, keys: set[str]):
    """`n_filler` haystack tokens and the offsets between its pieces (0 first) where a needle may
    go: repeated noise, or (RULER's "needle" haystack) needles of other random keys. A last piece
    cut short keeps its "\n", so the question still starts a line."""
    pieces: list[list[int]] = []
    total = 0
    while total < n_filler:
        if config.haystack == "noise":
            piece = noise
        else:
            key = _distinct(rng, config.key_type, 1, keys)[0]
            piece = _needle(tokenizer, config, key, _draw(rng, config.value_type))
        pieces.append(piece)
        total += len(piece)
    bounds = [0, *np.cumsum([len(p) for p in pieces]).tolist()]
    filler = [t for piece in pieces for t in piece]
    if total == n_filler:  # the haystack ends with a whole piece
        return filler, bounds
    newline = tokenizer.encode("\n")
    kept = max(n_filler - len(newline), 0)
    filler = (filler[:kept] + newline)[:n_filler]
    return filler, [b for b in bounds if b < kept or b == 0]


def _needle(tokenizer, config: NiahConfig, key: str, value: str) -> list[int]:
    """A needle with RULER's "\n" separator after it (its value kind plural, as in RULER)."""
    needle = NEEDLE.format(type_needle_v=config.value_type, key=key, value=value)
    return tokenizer.encode(needle + "\n")


def _draw(rng, kind: str) -> str:
    """One random key or value of RULER's kind: 7-digit number, adjective-noun word, uuid4."""
    if kind == "numbers":
        return str(int(rng.integers(10**6, 10**7)))
    if kind == "words":
        return f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]}-{_NOUNS[rng.integers(len(_NOUNS))]}"
    return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))


def _distinct(rng, kind: str, n: int, taken: set[str]) -> list[str]:
    """`n` draws, none in `taken` nor repeated (so a question has one answer per key)."""
    drawn: list[str] = []
    while len(drawn) < n:
        value = _draw(rng, kind)
        if value not in taken and value not in drawn:
            drawn.append(value)
    return drawn
