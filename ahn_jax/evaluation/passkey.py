"""Pass-key retrieval: a number hidden at a chosen depth of filler text, asked for at the end.

Each prompt is exactly `length` tokens: the instruction, filler up to the needle, the needle, the
rest of the filler and the question, each tokenised on its own and concatenated, so prompts of one
length batch together. The key of each (length, depth, index) cell is drawn from its own seeded
generator: a sample does not change when other lengths or depths are added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ahn_jax.tokenizer import user_turn_frame

INSTRUCTION = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it."
)
FILLER = (
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
ASK = " What is the pass key?"
ANSWER_PREFIX = " The pass key is"
QUESTION = ASK + ANSWER_PREFIX


@dataclasses.dataclass(frozen=True)
class PasskeySample:
    id: str
    length: int  # tokens in the prompt
    depth: float  # where the needle starts, as a fraction of the filler
    passkey: str
    ids: list[int]


def grid_cells(lengths: Sequence[int], depths: Sequence[float], samples_per_cell: int, seed: int):
    """(length, depth, index, generator) for every cell of the grid; each cell draws from its own
    generator, seeded by the cell, so a sample does not change when other cells are added."""
    for length in lengths:
        for depth in depths:
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"--depths must lie in [0, 1], got {depth}")
            for index in range(samples_per_cell):
                cell = [seed, int(length), round(depth * 10_000), index]
                yield int(length), depth, index, np.random.default_rng(cell)


def passkey_samples(
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples_per_cell: int,
    seed: int,
    *,
    chat: bool = False,
) -> list[PasskeySample]:
    """`samples_per_cell` prompts for every (length, depth); the same arguments give the same
    samples (keys and token ids). With `chat` the instruction, haystack and question are one user
    turn of the chat template (the tokenizer's default system turn) and the answer prefix opens
    the assistant's turn, as RULER's prompts are framed; the `length` tokens include the
    template's."""
    opening, closing = user_turn_frame(tokenizer.default_system) if chat else ("", "")
    # without chat the question and answer prefix are one string, tokenised as one
    answer = ANSWER_PREFIX.lstrip() if chat else ANSWER_PREFIX
    instruction = tokenizer.encode(opening + INSTRUCTION)
    question = tokenizer.encode(ASK + closing + answer)
    filler_unit = tokenizer.encode(FILLER)
    samples = []
    for length, depth, index, rng in grid_cells(lengths, depths, samples_per_cell, seed):
        key = str(rng.integers(10_000, 100_000))
        needle = tokenizer.encode(NEEDLE.format(key=key))
        n_filler = length - len(instruction) - len(needle) - len(question)
        if n_filler < 0:
            raise ValueError(
                f"--lengths {length} is too short: instruction, needle and question take "
                f"{length - n_filler} tokens"
            )
        repeats = -(-n_filler // len(filler_unit))
        filler = (filler_unit * repeats)[:n_filler]
        # the needle goes between two filler sentences (a unit boundary) at or before depth
        at = int(depth * n_filler) // len(filler_unit) * len(filler_unit)
        ids = instruction + filler[:at] + needle + filler[at:] + question
        samples.append(
            PasskeySample(f"passkey:{length}:{depth:g}:{index}", length, depth, key, ids)
        )
    return samples
