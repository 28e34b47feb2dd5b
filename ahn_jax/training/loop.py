"""The training loop: self-distillation of the AHN weights (`python -m ahn_jax.train`).

(`train.objective = "pretrain"` instead trains every weight of a base without AHN by next-token
prediction under full attention, and exports it to `<output_dir>/model`: the demo's tiny base.)

Teacher: the frozen model in mode "full" (no gradient). Student: the same weights in mode "ahn"
with a window and sinks drawn per row from the row's own length (training/windows.py). Loss:
KL(teacher || student) on positions >= S + W whose label is not ignored (`train.loss` may also be
"ce" or "distill"). Only
`AhnParam` weights get gradients and optimizer state (AdamW, warmup + cosine, clipping; gradient
accumulation over `train.micro_batches`).

The run's set-up is training/run.py, the step training/step.py, checkpoints and exports
training/checkpointing.py (Orbax, asynchronous, keep N: AHN weights, optimizer state, each
process's data iterator state and the step; a restarted run with the same command resumes from the
latest one and continues exactly, also on another mesh). Several processes (`train.distributed`)
each read their own rows of every global batch. Process 0 prints the run's set-up, then a
progress bar on a terminal or plain lines in a log (training/progress.py); metrics go to
`<output_dir>/metrics.jsonl` and TensorBoard (with an MFU estimate); `train.profile_steps` traces
steps with the JAX profiler. At the end the AHN weights are exported in the reference's layout to
`<output_dir>/ahn`.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ahn_jax.training import windows
from ahn_jax.training.checkpointing import export_ahn, export_model, save
from ahn_jax.training.distributed import gather_rows, on_mesh
from ahn_jax.training.interrupt import InterruptedTrainingError, StopOnSignal
from ahn_jax.training.metrics_log import MetricsLog
from ahn_jax.training.profiling import Profile, Utilization
from ahn_jax.training.progress import Progress, start_lines
from ahn_jax.training.run import Run, setup
from ahn_jax.training.step import make_train_step


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message names the step."""


def train(config) -> Run:
    """Train (or resume) the run that `config` describes up to `train.steps`; returns the Run.

    `setup` restores the latest checkpoint under `train.output_dir` (weights, optimizer state, each
    process's data iterator), so a restarted run carries on from there and continues exactly. Each
    step (`_step`) takes the next global batch, draws every row's (W, S) from its own length and
    stops at a non-finite loss; process 0 logs (every `log_every` steps) and shows progress, and a
    checkpoint is saved (asynchronously) every `checkpoint_every` steps and at the last, or, on
    SIGINT / SIGTERM, after the step in flight: then `InterruptedTrainingError` ends the run
    (training/interrupt.py).
    At the end it waits for the pending saves, then exports the AHN weights in the reference's
    layout to `<output_dir>/ahn` (or, with `objective = "pretrain"`, the whole model to
    `<output_dir>/model`)."""
    run = setup(config)
    t = run.train
    run.step_fn = make_train_step(run.graphdef, run.tx, run.schedule, t)
    lead = jax.process_index() == 0  # one process writes metrics and shows progress
    loss_name = "ce" if t.objective == "pretrain" else t.loss
    progress = Progress(t.steps, run.start_step, t.log_every, loss_name, enabled=lead)
    for line in start_lines(run):
        progress.print(line)
    devices = 1 if run.mesh is None else run.mesh.size
    utilization = Utilization(run.model_config, devices, t.peak_flops_per_device)
    profile = Profile(run.output_dir / "profile", t.profile_steps)
    last_time = time.perf_counter()
    log = MetricsLog(run.output_dir, tensorboard=t.tensorboard, enabled=lead,
                     start_step=run.start_step)  # fmt: skip
    signum, notices = None, _Notices(run, progress)
    with log, on_mesh(run.mesh), StopOnSignal() as stop:
        for step in range(run.start_step + 1, t.steps + 1):
            profile.before(step)
            outcome = _step(run, step)
            profile.after(step)
            notices.after(outcome)
            now = time.perf_counter()
            record = _record(run, outcome, loss_name, now - last_time, utilization)
            last_time = now
            signum = stop.requested()
            if step % t.log_every == 0 or step == t.steps or signum:
                _log(log, record, outcome)
            progress.update(record)
            if step % t.checkpoint_every == 0 or step == t.steps or signum:
                save(run, step)
            if signum:
                break
        # a signal during the last step's save was told the run stops: so it does, before the
        # export (the same command then exports)
        signum = signum or stop.requested()
    profile.close()
    progress.close()
    run.manager.wait_until_finished()
    if signum:
        raise InterruptedTrainingError(run.manager.latest_step(), signum)
    if t.objective == "pretrain":
        export_model(run)
    else:
        export_ahn(run)
    return run


class _Notices:
    """What the loop tells once: where the data's next pass begins (a run longer than its data
    repeats samples, where the reference trains one pass), and the first batch none of whose rows
    reaches past its W + S (such a batch trains nothing: loss 0)."""

    def __init__(self, run: Run, progress: Progress):
        self.run, self.progress = run, progress
        self.data_pass, self.warned = None, False

    def after(self, o: StepOutcome) -> None:
        run = self.run
        if self.data_pass is not None and run.passes.current > self.data_pass:
            records = f" of {run.samples:,} records" if run.samples else ""
            self.progress.print(
                f"step {o.step}: the data's pass {run.passes.current} begins (every "
                f"sample{records} was read once; they repeat from here, where the reference's "
                "run trains one pass)"
            )
        self.data_pass = run.passes.current
        # (pretraining's loss counts every labelled position: all its rows learn, `_step`)
        if not (self.warned or o.learning.any()):
            self.warned = True
            t = run.train
            drawn = (f"train.window_choices {t.window_choices} (W + S with L/8 < W + S < L)"
                     if t.window_sampling == "random"
                     else f"train.window_sampling {t.window_sampling!r}")  # fmt: skip
            self.progress.print(
                f"warning: step {o.step}: no row reaches past its W + S (row lengths "
                f"{int(o.lengths.min())}-{int(o.lengths.max())}, {drawn}): such batches train "
                "nothing"
            )


class StepOutcome(NamedTuple):
    step: int
    loss: float
    metrics: dict  # the jitted step's scalars
    lengths: np.ndarray  # [B] every row's unpadded length, all processes' rows
    # [B] every row's W (without the sinks) and S; None when pretraining (full attention)
    window: np.ndarray | None
    sinks: np.ndarray | None
    padded: int  # the batch's padded length (its length bucket)
    # [B] bool: the rows with a memory position (`windows.memory_rows`); pretraining: every row
    learning: np.ndarray


def _step(run: Run, step: int) -> StepOutcome:
    """One optimizer step on the next global batch, each row with its own (W, S) (pretraining,
    under full attention, draws none).

    The pairs come from (seed, step, global row) and each row's true length, never the padded
    one (docs/method.md §Training), and reach the step as [B] int32 arrays placed like the rows:
    new draws do not recompile. A row's global index follows the data's dealing to the processes
    (`_row_placement`), so a sample draws the same pair on any process count, and a resumed run
    draws again what the lost one drew. A non-finite loss stops the run, naming the step, before
    anything of it is saved.
    """
    t = run.train
    batch = next(run.iterator)
    drawn = {}  # pretraining runs full attention: no window or sinks to draw, log or count
    if t.objective != "pretrain":
        drawn["window"], drawn["sinks"] = windows.sample_windows(
            batch["lengths"], seed=t.seed, step=step, kind=t.window_sampling, window=t.window,
            sinks=t.sinks, window_choices=t.window_choices, sink_choices=t.sink_choices,
            **_row_placement(jax.process_index(), jax.process_count()),
        )  # fmt: skip
    arrays = run.place_batch({**batch, **drawn})
    run.trainable, run.opt_state, metrics = run.step_fn(
        run.trainable, run.opt_state, run.frozen, arrays, jnp.int32(step - 1)
    )
    loss = float(metrics["loss"])
    # every process joins the gather (the logged distribution is the global batch's)
    columns = [batch["lengths"], *drawn.values()]
    lengths, *pair = gather_rows(np.stack(columns, axis=1).astype(np.int32)).T
    window, sinks = pair or (None, None)
    learning = (np.ones(len(lengths), bool) if window is None
                else windows.memory_rows(lengths, window, sinks))  # fmt: skip
    outcome = StepOutcome(step, loss, metrics, lengths, window, sinks, arrays["input_ids"].shape[1],
                          learning)  # fmt: skip
    if not math.isfinite(loss):
        run.manager.wait_until_finished()
        drawn_note = ""
        if window is not None:
            spread = _spread(outcome)
            drawn_note = (f" (W_tot {spread['window_total_min']}..{spread['window_total_max']}, "
                          f"S {spread['sinks_min']}..{spread['sinks_max']})")  # fmt: skip
        raise TrainingError(
            f"non-finite loss {loss} at step {step}{drawn_note}; the last good checkpoint is "
            f"step {run.manager.latest_step()}"
        )
    return outcome


def _row_placement(process_index: int, process_count: int) -> dict:
    """Where a process's rows sit in the global batch, as `sample_windows` takes it: process p of
    P holds rows p, p + P, ... (data.make_dataset deals one shuffled stream in turn)."""
    return {"row_offset": process_index, "row_stride": process_count}


def _spread(o: StepOutcome) -> dict:
    """min / median (the lower one: a drawn value) / max of W_tot = W + S and of S over the rows
    with a memory position; None when the batch has none."""
    stats = {}
    for name, values in (("window_total", o.window + o.sinks), ("sinks", o.sinks)):
        values = np.sort(values[o.learning])
        for stat, at in (("min", 0), ("median", (len(values) - 1) // 2), ("max", -1)):
            stats[f"{name}_{stat}"] = int(values[at]) if len(values) else None
    return stats


def _log(log: MetricsLog, record: dict, o: StepOutcome) -> None:
    """The record, and a histogram of W_tot over the rows with a memory position (as `_spread`;
    none when pretraining)."""
    if o.window is not None and o.learning.any():
        log.histogram("window_total", (o.window + o.sinks)[o.learning], o.step)
    log.write(record)


def _record(run: Run, outcome: StepOutcome, loss_name: str, seconds: float, utilization) -> dict:
    """The step's line of metrics.jsonl (and TensorBoard scalars)."""
    o = outcome
    # the FLOP estimate takes one lossless length per batch: the rows' mean W_tot (the window's
    # work is close to linear in it once L >> W_tot), rows without a memory position included;
    # pretraining has none (None: a full-attention step's FLOPs)
    mean_total = None
    drawn = {}
    if o.window is not None:
        mean_total = max(1, round(float(np.mean(o.window + o.sinks))))
        drawn = {
            **_spread(o),
            "rows_without_window": windows.rows_without_window(o.lengths, o.window, o.sinks),
        }
    return {
        "step": o.step,
        "loss": o.loss,
        loss_name: o.loss,
        "grad_norm": float(o.metrics["grad_norm"]),
        "learning_rate": float(o.metrics["learning_rate"]),
        **drawn,
        "sequences": int(o.metrics["sequences"]),
        "valid_tokens": int(o.metrics["valid_tokens"]),
        "padded_length": o.padded,
        "tokens_per_s": float(o.lengths.sum()) / seconds,
        "step_seconds": seconds,
        **utilization.of_step(len(o.lengths), o.padded, mean_total, seconds),
        "skipped_records": run.skips.count,
        "data_pass": run.passes.current,
    }
