"""What a person watching a training run reads (process 0 only): the run's set-up at the start,
then a tqdm bar on a terminal, or, when stdout is not a terminal (a TPU pod's or a batch job's
log, where a bar shows nothing), one plain line every `log_every` steps:

  step 40/740  loss 0.1234  W_tot 512/2048/8192  S 0/64/2048  tok/s 12,345  step 1.23 s  ETA 0:12:34

(W_tot = W + S and S as min/median/max over the global batch's rows; pretraining, under full
attention, draws neither and its lines leave them out.)
"""

from __future__ import annotations

import datetime
import sys

import jax
from tqdm import tqdm

from ahn_jax.training.distributed import row_split_warning
from ahn_jax.training.run import length_buckets


def start_lines(run) -> list[str]:
    """The run's set-up, before its first step: devices, mesh, parameters, data, checkpoints."""
    t, d = run.train, run.data
    devices = jax.devices()
    mesh = (
        "none (one device)"
        if run.mesh is None
        else ", ".join(f"{axis}={size}" for axis, size in run.mesh.shape.items())
    )
    files = ", ".join(d.paths) if d.paths else f"{d.format} (held out: {', '.join(d.held_out)})"
    drawn = " drawn by data.mix" if d.mix else ""  # the mixture's length, not the files' sum
    samples = "" if run.samples is None else f"{run.samples:,} records{drawn} from "
    resume = f"; resuming after step {run.start_step}" if run.start_step else ""
    windows = (f"fixed, W {t.window} + S {t.sinks}" if t.window_sampling == "fixed"
               else f"{t.window_sampling}, drawn per row")  # fmt: skip
    if t.objective == "pretrain":  # train.window_sampling is not read
        windows = "none (pretraining: full attention)"
    lines = [
        f"devices: {len(devices)} x {devices[0].device_kind} in {jax.process_count()} process(es)",
        f"mesh: {mesh}",
        f"parameters: {_count(run.trainable):,} trainable, {_count(run.frozen):,} frozen",
        f"data: {samples}{files}; {run.skips.count} bad records skipped so far",
        f"batches: {t.batch_size} rows, padded to the smallest of {length_buckets(t)} that holds "
        f"their longest; windows: {windows}",
        f"steps: {t.steps}; checkpoints every {t.checkpoint_every} in "
        f"{run.output_dir / 'checkpoints'}{resume}",
    ]
    if warning := row_split_warning(t, run.mesh):
        lines.insert(2, warning)
    if run.changed_settings:
        lines.append(f"changed since the checkpoint: {'; '.join(run.changed_settings)}")
    if run.rate_change and run.start_step < t.steps:  # (no note where nothing will train)
        lines.append(run.rate_change)
    if run.start_step < t.steps:  # the first step's wait, before any progress shows
        lines.append(
            f"step {run.start_step + 1} waits for the train step to compile (seconds to minutes "
            "by model)"
        )
    return lines


def _count(state) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(state))


class Progress:
    """Per-step progress: tqdm's bar where stdout is a terminal, else plain lines."""

    def __init__(self, total: int, start: int, every: int, loss_name: str, *, enabled: bool,
                 out=None):  # fmt: skip
        self.total, self.every, self.loss_name, self.enabled = total, every, loss_name, enabled
        self.out = out or sys.stdout
        self.bar = None
        if enabled and self.out.isatty():
            self.bar = tqdm(total=total, initial=start, desc="train", file=self.out,
                            dynamic_ncols=True)  # fmt: skip
        # the ETA's mean step time leaves out this process's first step (it compiles): no ETA
        # until a second step is timed
        self._first_done, self._timed, self._seconds = False, 0, 0.0

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.out, flush=True)

    def update(self, record: dict) -> None:
        if not self.enabled:
            return
        if not self._first_done:
            self._first_done = True
        else:
            self._timed, self._seconds = self._timed + 1, self._seconds + record["step_seconds"]
        if self.bar is not None:
            shown = {self.loss_name: f"{record['loss']:.4f}"}
            if _DRAWN in record:  # (pretraining draws no window)
                shown["W_tot"] = _spread(record, "window_total")
            shown["tok/s"] = f"{record['tokens_per_s']:,.0f}"
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update()
        elif record["step"] % self.every == 0 or record["step"] == self.total:
            self.print(self.line(record))

    def line(self, record: dict) -> str:
        step = record["step"]
        # after the first step alone the ETA would be the compile's time per step: "-" instead
        eta = "-"
        if self._timed or step == self.total:
            mean = self._seconds / self._timed if self._timed else 0.0
            eta = datetime.timedelta(seconds=round(mean * (self.total - step)))
        drawn = ""
        if _DRAWN in record:  # (pretraining draws no window)
            drawn = f"W_tot {_spread(record, 'window_total')}  S {_spread(record, 'sinks')}  "
        return (
            f"step {step}/{self.total}  loss {record['loss']:.4f}  {drawn}"
            f"tok/s {record['tokens_per_s']:,.0f}  step {record['step_seconds']:.2f} s  ETA {eta}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# a record with the rows' window draws has this key (a distillation step's)
_DRAWN = "window_total_min"


def _spread(record: dict, name: str) -> str:
    """min/median/max of a per-row value; "-" when no row of the batch has a window."""
    values = [record[f"{name}_{stat}"] for stat in ("min", "median", "max")]
    return "-" if values[0] is None else "/".join(str(v) for v in values)
