"""Several data files mixed with probabilities `data.mix`, as the reference mixes its datasets
(docs/method.md §Training): LLaMA-Factory's `interleave_probs`, which is Hugging Face datasets'
`interleave_datasets` with the "first_exhausted" stopping strategy (LLaMA-Factory's
`mix_strategy = "interleave_under"`, which the reference must name: LLaMA-Factory's default,
`concat`, refuses `interleave_probs`). Without `data.mix` the files are concatenated (`concat`).

Each draw picks a file with the given probabilities and takes that file's next record, in file
order; the mixture ends with the draw that takes the last record of some file. The draws come from
`numpy.random.default_rng(seed)` 1000 at a time, as in `datasets` 3.6 (the reference's pin), so the
same seed and file sizes give the reference's order. The result is one finite list of records,
shuffled anew each epoch downstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DRAWS_PER_CALL = 1000  # datasets draws the files' indices 1000 at a time; kept for the same order


def interleave(sizes: Sequence[int], probs: Sequence[float], seed: int) -> np.ndarray:
    """[n, 2] (file, record index in the file) of the mixture, in draw order."""
    sizes = np.asarray(sizes, np.int64)
    p = np.asarray(probs, np.float64)
    if len(sizes) != len(p) or not np.all(p >= 0) or not p.sum() > 0:
        raise ValueError(f"need one probability >= 0 per file, got {list(probs)} for {len(sizes)}")
    if np.any((sizes == 0) & (p > 0)):
        raise ValueError(f"a file drawn with probability > 0 has no records: sizes {list(sizes)}")
    p = p / p.sum()  # within numpy's tolerance for `choice`, which is tighter than the config's
    rng = np.random.default_rng(seed)
    taken = np.zeros(len(sizes), np.int64)  # records taken from each file so far
    pieces = []
    while True:
        files = rng.choice(len(sizes), size=DRAWS_PER_CALL, p=p)
        running = np.cumsum(files[:, None] == np.arange(len(sizes)), axis=0)
        index = taken[files] + running[np.arange(DRAWS_PER_CALL), files] - 1
        last = np.flatnonzero(index == sizes[files] - 1)
        if last.size:  # the first file to run out ends the mixture, with its last record
            end = last[0] + 1
            pieces.append(np.stack([files[:end], index[:end]], axis=1))
            return np.concatenate(pieces)
        pieces.append(np.stack([files, index], axis=1))
        taken += running[-1]
