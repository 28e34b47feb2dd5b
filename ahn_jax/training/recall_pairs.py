"""A long-range recall signal mixed into byte-level text, for the miniature reproduction.

Each window of text gets `pairs` key/recall pairs: a block `<k=` + `span` random letters + `>` and,
`min_gap`..`max_gap` bytes later, the cue `<r=` followed by the same letters and `>`. The letters
of a key are unpredictable (ln 26 nats each for lowercase; ln 26 .. ln 11 for 16 distinct ones);
after the cue a model that can see the key copies them, one that cannot (sinks + a window shorter
than the gap) cannot. An alphabet the text rarely uses (capitals, distinct) is much easier to
learn to copy: with lowercase keys a head that looks for "the byte after this letter" finds a
dozen matches in the text for each one in the key. The text
between blocks is the window's own text, in order. `kinds` labels every byte so that evaluation
can average the loss on the recalled letters, on the keys' letters (the baseline) and on ordinary
text separately.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KEY_OPEN, RECALL_OPEN, CLOSE = b"<k=", b"<r=", b">"
ORDINARY, KEY_LETTER, RECALL_LETTER, MARKER = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class RecallSpec:
    span: int = 16  # letters per key
    pairs: int = 2  # key/recall pairs per window
    min_gap: int = 96  # bytes from a key's start to its recall's start
    max_gap: int = 384
    first_key: int = 8  # no key starts before this (keeps keys out of the attention sinks)
    letters: str = "abcdefghijklmnopqrstuvwxyz"  # the alphabet keys are drawn from
    distinct: bool = False  # no letter twice in a key (so each letter has one successor)

    @property
    def block(self) -> int:
        return len(KEY_OPEN) + self.span + len(CLOSE)

    def check(self, length: int) -> None:
        if not self.letters or not self.letters.isascii():
            raise ValueError(f"recall.letters must be non-empty ASCII, got {self.letters!r}")
        distinct = len(set(self.letters))
        if self.distinct and self.span > distinct:
            raise ValueError(f"recall.span {self.span} > {distinct} distinct recall.letters")
        if self.min_gap < self.block or self.max_gap < self.min_gap:
            raise ValueError(f"recall gaps must satisfy block {self.block} <= min_gap <= max_gap")
        if self.first_key + self.max_gap + self.block > length:
            raise ValueError(
                f"a window of {length} bytes cannot hold a pair {self.max_gap} bytes apart "
                f"after byte {self.first_key}"
            )


# the copy warm-up's text (data.copy_warmup): lowercase letters and spaces, nothing to learn but
# the pairs, whose capitals it never shows
FILLER = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", np.uint8).astype(np.int32)


def filler(length: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(FILLER, length)


def insert_recall(text_ids: np.ndarray, length: int, spec: RecallSpec, rng: np.random.Generator):
    """(ids [length], kinds [length]): the pairs placed in a window whose other bytes are
    `text_ids`, in order (length minus the blocks' bytes of it are used)."""
    spec.check(length)
    starts = _place_pairs(length, spec, rng)
    ids = np.zeros(length, np.int32)
    kinds = np.full(length, ORDINARY, np.int8)
    occupied = np.zeros(length, bool)
    for key_start, recall_start in starts:
        alphabet = np.frombuffer(spec.letters.encode(), np.uint8).astype(np.int32)
        letters = rng.choice(alphabet, spec.span, replace=not spec.distinct)
        for start, opener, kind in ((key_start, KEY_OPEN, KEY_LETTER),
                                    (recall_start, RECALL_OPEN, RECALL_LETTER)):  # fmt: skip
            block = np.concatenate([np.frombuffer(opener, np.uint8), letters, [ord(">")]])
            ids[start : start + spec.block] = block
            kinds[start : start + spec.block] = MARKER
            kinds[start + len(opener) : start + len(opener) + spec.span] = kind
            occupied[start : start + spec.block] = True
    free = np.flatnonzero(~occupied)
    text = np.asarray(text_ids, np.int32)[: len(free)]
    if len(text) < len(free):
        raise ValueError(f"{len(text)} text bytes cannot fill {len(free)} free bytes")
    ids[free] = text
    return ids, kinds


def _place_pairs(length: int, spec: RecallSpec, rng) -> list[tuple[int, int]]:
    """Non-overlapping (key start, recall start) pairs, drawn by rejection."""
    for _ in range(1000):
        pairs = []
        for _ in range(spec.pairs):
            gap = int(rng.integers(spec.min_gap, spec.max_gap + 1))
            key = int(rng.integers(spec.first_key, length - gap - spec.block + 1))
            pairs.append((key, key + gap))
        blocks = sorted(s for pair in pairs for s in pair)
        if all(b - a >= spec.block for a, b in zip(blocks, blocks[1:], strict=False)):
            return pairs
    raise ValueError(f"cannot place {spec.pairs} pairs in {length} bytes; lower recall.pairs")
