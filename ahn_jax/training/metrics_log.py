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
    """`start_step`: the step a resumed run continues after; the records of later steps (written
    before the run stopped, after its last checkpoint) are dropped, as the run redoes them."""

    def __init__(self, output_dir: Path, *, tensorboard: bool, enabled: bool = True,
                 start_step: int = 0):  # fmt: skip
        self.enabled = enabled
        self._jsonl = None
        if enabled:
            path = output_dir / "metrics.jsonl"
            _keep_records_up_to(path, start_step)
            self._jsonl = open(path, "a")  # noqa: SIM115 - closed by `close`
        self._board = None
        if enabled and tensorboard:
            self._board = _writer(output_dir / "tensorboard", purge_step=start_step + 1)

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


def _keep_records_up_to(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl without the records of steps after `step` (a torn last line from a
    killed run included)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(kept))


def _writer(directory: Path, purge_step: int):
    """A TensorBoard writer, imported only when one is wanted: tensorboardX imports torch, seconds
    of start-up that a run without TensorBoard (or a config error) should not pay. Events of
    steps from `purge_step` on, left by a run that stopped, are hidden (TensorBoard's purge)."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(directory), purge_step=purge_step)
