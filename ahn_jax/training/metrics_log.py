"""Where training metrics go: `<output_dir>/metrics.jsonl` (one JSON object per logged step) and
TensorBoard event files in `<output_dir>/tensorboard` (`tensorboard --logdir <output_dir>`): the
scalars of each record, and histograms of per-row values.

Only process 0 writes; the others get a log that drops everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class MetricsLog:
    def __init__(self, output_dir: Path, *, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = open(output_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self._board = _writer(output_dir / "tensorboard") if enabled and tensorboard else None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._board is not None:
            step = record["step"]
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float):
                    self._board.add_scalar(f"train/{name}", value, step)
            self._board.flush()

    def histogram(self, name: str, values, step: int) -> None:
        """A TensorBoard histogram of one step's values (e.g. the rows' W_tot: the scalars of
        `write` show only its min, median and max)."""
        if self._board is not None:
            self._board.add_histogram(f"train/{name}", np.asarray(values), step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._board is not None:
            self._board.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _writer(directory: Path):
    """A TensorBoard writer, imported only when one is wanted: tensorboardX imports torch, seconds
    of start-up that a run without TensorBoard (or a config error) should not pay."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(directory))
