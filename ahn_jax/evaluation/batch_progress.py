"""Where the batch in flight stands, on the evaluation's progress bar.

The bars count samples and move when a batch is written; a batch of long prompts takes minutes
before that (prefill of 8 x 32k tokens on a CPU), so the bar's postfix tells the stage inside the
batch ("prompt 8,192/32,768 tokens", "decoding 12/64"; perplexity's "scored 8,192/32,767
tokens"), redrawn at most every `interval` seconds.
"""

from __future__ import annotations

import time


class BatchProgress:
    """The postfix of a tqdm `bar` for the batch in flight; `label` names the tokens fed."""

    def __init__(self, bar, label: str = "prompt", interval: float = 0.5):
        self.bar, self.label, self.interval = bar, label, interval
        self._shown_at = -float("inf")
        self._decoded, self._budget = 0, 0

    def start(self, budget: int) -> None:
        """A new batch whose longest answer may take `budget` tokens."""
        self._decoded, self._budget = 0, budget

    def fed(self, done: int, total: int) -> None:
        """`done` of the batch's `total` positions fed (`AhnModel.prefill`'s `on_chunk`)."""
        self._show(f"{self.label} {done:,}/{total:,} tokens")

    def decoded(self, _tokens=None) -> None:
        """One decode step done (`generate`'s `on_tokens`)."""
        self._decoded += 1
        self._show(f"decoding {self._decoded}/{self._budget}")

    def written(self) -> None:
        """The batch is done: its stage leaves the bar (redrawn by the bar's own update)."""
        self.bar.set_postfix_str("", refresh=False)
        self._shown_at = -float("inf")

    def _show(self, text: str) -> None:
        now = time.monotonic()
        if now - self._shown_at >= self.interval:
            self.bar.set_postfix_str(text)
            self._shown_at = now
