"""The training loop: self-distillation of the AHN weights (`python -m ahn_jax.train`).

(`train.objective = "pretrain"` instead trains every weight of a base without AHN by next-token
prediction under full attention, and exports it to `<output_dir>/model`: the demo's tiny base.)

Teacher: the frozen model in mode "full" (no gradient). Student: the same weights in mode "ahn"
with a window and sinks sampled per step (training/windows.py). Loss: KL(teacher || student) on
positions >= S + W whose label is not ignored (`train.loss` may also be "ce" or "distill"). Only
`AhnParam` weights get gradients and optimizer state (AdamW, warmup + cosine, clipping; gradient
accumulation over `train.micro_batches`).

The run's set-up is training/run.py, the step training/step.py, checkpoints and exports
training/checkpointing.py (Orbax, asynchronous, keep N: AHN weights, optimizer state, each
process's data iterator state and the step; a restarted run with the same command resumes from the
latest one and continues exactly, also on another mesh). Several processes (`train.distributed`)
each read their own rows of every global batch. Metrics go to a progress bar,
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
from tqdm import tqdm

from ahn_jax.training import windows
from ahn_jax.training.checkpointing import export_ahn, export_model, save
from ahn_jax.training.distributed import global_max, on_mesh
from ahn_jax.training.metrics_log import MetricsLog
from ahn_jax.training.profiling import Profile, Utilization
from ahn_jax.training.run import Run, setup
from ahn_jax.training.step import make_train_step


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message names the step."""


def train(config) -> Run:
    """Train (or resume) the run that `config` describes up to `train.steps`; returns the Run.

    `setup` restores the latest checkpoint under `train.output_dir` (weights, optimizer state, each
    process's data iterator), so a restarted run carries on from there and continues exactly. Each
    step:
    - takes the next global batch and draws (W, S) from (seed, step) with T = the longest real row
      over all processes (docs/method.md §Training): every process must pass the same pair to the
      one SPMD step, and a resumed run draws again what the lost one drew;
    - passes W and S as traced int32 scalars, so new draws do not recompile the step;
    - stops at a non-finite loss with an error naming the step, W, S and the last good
      checkpoint, before anything of that step is saved;
    - logs from process 0 only, and saves a checkpoint (asynchronously) every `checkpoint_every`
      steps and at the last.
    At the end it waits for the pending saves, then exports the AHN weights in the reference's
    layout to `<output_dir>/ahn` (or, with `objective = "pretrain"`, the whole model to
    `<output_dir>/model`)."""
    run = setup(config)
    t = run.train
    run.step_fn = make_train_step(run.graphdef, run.tx, run.schedule, t)
    lead = jax.process_index() == 0  # one process writes metrics and shows progress
    loss_name = "ce" if t.objective == "pretrain" else t.loss
    bar = tqdm(total=t.steps, initial=run.start_step, desc="train",
               disable=None if lead else True, dynamic_ncols=True)  # fmt: skip
    devices = 1 if run.mesh is None else run.mesh.size
    utilization = Utilization(run.model_config, devices, t.peak_flops_per_device)
    profile = Profile(run.output_dir / "profile", t.profile_steps)
    last_time = time.perf_counter()
    log = MetricsLog(run.output_dir, tensorboard=t.tensorboard, enabled=lead)
    with log, on_mesh(run.mesh):
        for step in range(run.start_step + 1, t.steps + 1):
            profile.before(step)
            outcome = _step(run, step)
            profile.after(step)
            now = time.perf_counter()
            record = _record(run, outcome, loss_name, now - last_time, utilization)
            last_time = now
            if step % t.log_every == 0 or step == t.steps:
                log.write(record)
            bar.set_postfix({loss_name: f"{record['loss']:.4f}", "W": record["window"],
                             "S": record["sinks"], "tok/s": f"{record['tokens_per_s']:,.0f}"},
                            refresh=False)  # fmt: skip
            bar.update()
            if step % t.checkpoint_every == 0 or step == t.steps:
                save(run, step)
    profile.close()
    bar.close()
    run.manager.wait_until_finished()
    if t.objective == "pretrain":
        export_model(run)
    else:
        export_ahn(run)
    return run


class StepOutcome(NamedTuple):
    step: int
    loss: float
    metrics: dict  # the jitted step's scalars
    window: int
    sinks: int
    tokens: float  # real (unpadded) tokens of the global batch
    rows: int  # global batch rows
    padded: int  # the batch's padded length


def _step(run: Run, step: int) -> StepOutcome:
    """One optimizer step on the next global batch with a (W, S) drawn for it.

    W and S come from (seed, step) with T = the longest real row over all processes: every process
    passes the same pair to the one SPMD step, and a resumed run draws again what the lost one drew.
    """
    t = run.train
    batch = next(run.iterator)
    length = global_max(int(batch["lengths"].max()))
    window, sinks = windows.sample_window(
        t.seed,
        step,
        length,
        kind=t.window_sampling,
        window=t.window,
        sinks=t.sinks,
        window_choices=t.window_choices,
        sink_choices=t.sink_choices,
    )
    arrays = run.place_batch(batch)
    run.trainable, run.opt_state, metrics = run.step_fn(
        run.trainable, run.opt_state, run.frozen, arrays,
        jnp.int32(window), jnp.int32(sinks), jnp.int32(step - 1),
    )  # fmt: skip
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        run.manager.wait_until_finished()
        raise TrainingError(
            f"non-finite loss {loss} at step {step} (window {window}, sinks {sinks}); "
            f"the last good checkpoint is step {run.manager.latest_step()}"
        )
    tokens = float(batch["lengths"].sum()) * jax.process_count()
    return StepOutcome(step, loss, metrics, window, sinks, tokens, *arrays["input_ids"].shape)


def _record(run: Run, outcome: StepOutcome, loss_name: str, seconds: float, utilization) -> dict:
    """The step's line of metrics.jsonl (and TensorBoard scalars)."""
    o = outcome
    return {
        "step": o.step,
        "loss": o.loss,
        loss_name: o.loss,
        "grad_norm": float(o.metrics["grad_norm"]),
        "learning_rate": float(o.metrics["learning_rate"]),
        "window": o.window,
        "sinks": o.sinks,
        "valid_tokens": int(o.metrics["valid_tokens"]),
        "tokens_per_s": o.tokens / seconds,
        "step_seconds": seconds,
        **utilization.of_step(o.rows, o.padded, o.window + o.sinks, seconds),
        "skipped_records": run.skips.count,
    }
