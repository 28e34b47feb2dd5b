"""Self-distillation of the AHN weights: `python -m ahn_jax.train --config=configs/X.py`.

(`train.objective = "pretrain"` instead trains every weight of a base without AHN by next-token
prediction under full attention, and exports it to `<output_dir>/model`: the demo's tiny base.)

Teacher: the frozen model in mode "full" (no gradient). Student: the same weights in mode "ahn"
with a window and sinks sampled per step (ahn_jax/windows.py). Loss: KL(teacher || student) on
positions >= S + W whose label is not ignored (`train.loss` may also be "ce" or "distill"). Only
`AhnParam` weights get gradients and optimizer state (AdamW, warmup + cosine, clipping; gradient
accumulation over `train.micro_batches`).

The step itself is ahn_jax/train_step.py. Checkpoints (Orbax CheckpointManager, asynchronous, keep
N) hold the AHN weights, the optimizer state, each process's data iterator state and the step; a
restarted run with the same command resumes from the latest one and continues exactly, also on
another mesh. Several processes (`train.distributed`) each read their own rows of every global
batch. Metrics go to a progress bar, `<output_dir>/metrics.jsonl` and TensorBoard (with an MFU
estimate); `train.profile_steps` traces steps with the JAX profiler. At the end the AHN weights are
exported in the reference's layout to `<output_dir>/ahn`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx, traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from tqdm import tqdm

from ahn_jax import ahn_io, cli, data, windows
from ahn_jax.ahn import AhnParam
from ahn_jax.config import ConfigError, ModelConfig, validate_config
from ahn_jax.loading import from_pretrained, save_model
from ahn_jax.metrics_log import MetricsLog
from ahn_jax.model import init_model
from ahn_jax.optim import optimizer_for
from ahn_jax.profiling import Profile, Utilization
from ahn_jax.sharding import MeshError, make_mesh, partition_spec, shard_module
from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer
from ahn_jax.train_step import LOSSES, OBJECTIVES, make_train_step


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message names the step."""


# ---- settings ----------------------------------------------------------------------------------


def validate_train_config(config) -> None:
    """Fail at start-up, naming the field and the value, for what would fail later."""
    for section in ("train", "data"):
        if section not in config:
            raise ConfigError(f"config has no '{section}' section")
    t, d = config.train, config.data
    positive = ("steps", "batch_size", "micro_batches", "seq_len", "checkpoint_every", "log_every")
    for name in positive:
        value = t.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
    if t.batch_size % t.micro_batches:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batches "
            f"({t.micro_batches})"
        )
    if t.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective must be one of {OBJECTIVES}, got {t.objective!r}")
    if t.loss not in LOSSES:
        raise ConfigError(f"train.loss must be one of {LOSSES}, got {t.loss!r}")
    if t.window_sampling not in windows.KINDS:
        raise ConfigError(
            f"train.window_sampling must be one of {windows.KINDS}, got {t.window_sampling!r}"
        )
    if not t.learning_rate > 0:
        raise ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate!r}")
    if t.window_sampling == "fixed" and t.window + t.sinks >= t.seq_len:
        raise ConfigError(
            f"train.window ({t.window}) + train.sinks ({t.sinks}) must be below train.seq_len "
            f"({t.seq_len}): no position would reach the memory"
        )
    if d.cutoff_len > t.seq_len:
        raise ConfigError(
            f"data.cutoff_len ({d.cutoff_len}) must not exceed train.seq_len ({t.seq_len})"
        )
    if t.base_checkpoint and not Path(t.base_checkpoint).exists():
        raise ConfigError(f"train.base_checkpoint = {t.base_checkpoint!r} does not exist")
    for path in d.get("paths", ()):
        if not Path(path).exists():
            raise ConfigError(f"data.paths has {path!r}, which does not exist")
    if t.distributed and not t.mesh:
        raise ConfigError("train.distributed = True needs train.mesh (the global device mesh)")
    profile = tuple(t.profile_steps)
    if profile and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
        raise ConfigError(
            f"train.profile_steps must be (first, last) with 1 <= first <= last, got {profile!r}"
        )


def initialize_distributed(t) -> None:
    """Join the other processes of a multi-process run (TPU pod hosts, GPU nodes). Empty
    address / -1 count and id let JAX find them itself (TPU pods, SLURM)."""
    if not t.distributed or jax.distributed.is_initialized():
        return
    settings = {
        "coordinator_address": t.coordinator_address or None,
        "num_processes": None if t.num_processes < 0 else t.num_processes,
        "process_id": None if t.process_id < 0 else t.process_id,
    }
    jax.distributed.initialize(**settings)
    logging.info("process %d of %d", jax.process_index(), jax.process_count())


def parse_mesh(spec: str) -> dict[str, int]:
    """ "data=2,fsdp=4,tensor=1" -> {"data": 2, "fsdp": 4, "tensor": 1}."""
    sizes = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, size = part.partition("=")
        if not size.strip().isdigit():
            raise ConfigError(f"train.mesh = {spec!r}: {part!r} is not axis=size")
        sizes[name.strip()] = int(size)
    return sizes


def on_mesh(mesh):
    """The mesh as jit's context, or nothing on a single device."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def make_train_mesh(spec: str) -> jax.sharding.Mesh | None:
    if not spec:
        return None
    try:
        return make_mesh(parse_mesh(spec))
    except MeshError as e:
        raise ConfigError(f"train.mesh = {spec!r}: {e}") from e


def load_base(config, model_config: ModelConfig, mesh=None):
    """The frozen base (a checkpoint, or the config's random init) with fresh AHN weights,
    placed on `mesh` by the logical-axis rules when one is given."""
    t = config.train
    if t.base_checkpoint:
        return from_pretrained(
            t.base_checkpoint,
            ahn_type=model_config.ahn_type,
            seed=t.seed,
            dtype=model_config.jnp_param_dtype,
            compute_dtype=model_config.jnp_dtype,
            remat_policy=model_config.remat_policy,
            mesh=mesh,
        )
    model = init_model(model_config, seed=t.seed)
    return model if mesh is None else shard_module(model, mesh)


def length_buckets(t) -> tuple[int, ...]:
    """Batch lengths. Processes pad their rows alone, so several processes use the largest only:
    the rows of one global batch must agree on its length."""
    buckets = tuple(t.get("length_buckets") or (t.seq_len,))
    return buckets if jax.process_count() == 1 else (max(buckets),)


def tokenizer_for(config):
    if config.data.tokenizer == "bytes":
        return ByteTokenizer()
    directory = config.data.get("tokenizer_dir") or config.train.base_checkpoint
    if not directory:
        raise ConfigError("data.tokenizer = 'checkpoint' needs train.base_checkpoint")
    return HFTokenizer.from_dir(directory)


# ---- the run -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    config: object
    model_config: ModelConfig
    graphdef: object
    trainable: object
    frozen: object
    opt_state: object
    tx: object
    schedule: object
    iterator: object
    manager: ocp.CheckpointManager
    output_dir: Path
    skips: data.SkipCounter
    start_step: int = 0
    step_fn: object = None
    mesh: jax.sharding.Mesh | None = None

    def place_batch(self, batch: dict) -> dict:
        """The batch as arrays, split over the mesh's data-parallel axes."""
        local = {k: batch[k] for k in ("input_ids", "labels")}
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in local.items()}
        rows, length = local["input_ids"].shape
        global_shape = (rows * jax.process_count(), length)
        spec = partition_spec(("batch", None), global_shape, self.mesh)
        sharding = NamedSharding(self.mesh, spec)
        # each process holds its own rows of the global batch
        return {
            k: jax.make_array_from_process_local_data(sharding, v, global_shape)
            for k, v in local.items()
        }


def setup(config) -> Run:
    model_config = validate_config(config)
    validate_train_config(config)
    pretrain = config.train.objective == "pretrain"
    if pretrain and model_config.ahn_type is not None:
        raise ConfigError("train.objective = 'pretrain' trains the base: set ahn.type = None")
    if not pretrain and model_config.ahn_type is None:
        raise ConfigError("ahn.type must be set to train AHN weights")
    t = config.train
    initialize_distributed(t)
    mesh = make_train_mesh(t.mesh)
    output_dir = Path(t.output_dir).absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_base(config, model_config, mesh)
    # distillation trains the AHN weights only; pretraining every weight of the base
    graphdef, trainable, frozen = nnx.split(model, nnx.Param if pretrain else AhnParam, ...)
    tx, schedule = optimizer_for(t)
    # initialised by the compiler, under the mesh: moments placed like their weights, scalars
    # such as Adam's count on every device of the step (as `compile_check` derives them), so a
    # checkpoint restores onto placements that jit accepts
    with on_mesh(mesh):
        opt_state = jax.jit(tx.init)(trainable)
    skips = data.SkipCounter()
    dataset = data.make_dataset(
        config.data,
        tokenizer_for(config),
        batch_size=t.batch_size // jax.process_count(),
        seed=t.seed,
        buckets=length_buckets(t),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        skips=skips,
    )
    iterator = iter(dataset)
    manager = ocp.CheckpointManager(
        output_dir / "checkpoints",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=t.keep_checkpoints, enable_async_checkpointing=True
        ),
    )
    run = Run(config, model_config, graphdef, trainable, frozen, opt_state, tx, schedule,
              iterator, manager, output_dir, skips, mesh=mesh)  # fmt: skip
    restore_latest(run)
    return run


def save(run: Run, step: int) -> None:
    run.manager.save(
        step,
        args=ocp.args.Composite(
            trainable=ocp.args.StandardSave(run.trainable),
            opt_state=ocp.args.StandardSave(run.opt_state),
            data=grain.checkpoint.CheckpointSave(run.iterator),  # one file per process
            meta=ocp.args.JsonSave({"step": step, "config": json.loads(run.config.to_json())}),
        ),
    )


def restore_latest(run: Run) -> None:
    step = run.manager.latest_step()
    if step is None:
        return

    def abstract(tree):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )

    restored = run.manager.restore(
        step,
        args=ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract(run.trainable)),
            opt_state=ocp.args.StandardRestore(abstract(run.opt_state)),
            data=grain.checkpoint.CheckpointRestore(run.iterator),
            meta=ocp.args.JsonRestore(),
        ),
    )
    run.trainable, run.opt_state = restored.trainable, restored.opt_state
    run.start_step = step
    logging.info("resumed from %s at step %d", run.manager.directory, step)


def global_max(value: int) -> int:
    """The largest value over all processes (each sees only its own rows): every process must
    sample the same window and sinks."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.process_allgather(np.int32(value)).max())


def export_ahn(run: Run) -> Path:
    """The AHN weights in the reference's layout, written by process 0."""
    export_dir = run.output_dir / "ahn"
    gathered = multihost_utils.process_allgather(run.trainable, tiled=True)  # a collective
    if jax.process_index() == 0 and not export_dir.exists():
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(gathered))
        params = {path: np.asarray(value) for path, value in flat.items()}
        ahn_io.save_ahn_weights(export_dir, run.model_config, params)
    return export_dir


def export_model(run: Run) -> Path:
    """The pretrained base as a checkpoint `from_pretrained` (and `train.base_checkpoint`) reads."""
    export_dir = run.output_dir / "model"
    gathered = multihost_utils.process_allgather(run.trainable, tiled=True)  # a collective
    if jax.process_index() == 0 and not export_dir.exists():
        save_model(nnx.merge(run.graphdef, gathered, run.frozen), export_dir)
    return export_dir


def train(config) -> Run:
    run = setup(config)
    t = config.train
    step_fn = run.step_fn = make_train_step(run.graphdef, run.tx, run.schedule, t)
    lead = jax.process_index() == 0  # one process writes metrics and shows progress
    loss_name = "ce" if t.objective == "pretrain" else t.loss
    bar = tqdm(total=t.steps, initial=run.start_step, desc="train",
               disable=None if lead else True, dynamic_ncols=True)  # fmt: skip
    devices = 1 if run.mesh is None else run.mesh.size
    utilization = Utilization(run.model_config, devices, t.peak_flops_per_device)
    profile = Profile(run.output_dir / "profile", tuple(t.profile_steps))
    last_time = time.perf_counter()
    log = MetricsLog(run.output_dir, tensorboard=t.tensorboard, enabled=lead)
    with log, on_mesh(run.mesh):
        for step in range(run.start_step + 1, t.steps + 1):
            profile.before(step)
            batch = next(run.iterator)
            length = global_max(int(batch["lengths"].max()))
            window, sinks = windows.sample_window(
                t.seed,
                step,
                length,
                kind=t.window_sampling,
                window=t.window,
                sinks=t.sinks,
                window_choices=tuple(t.window_choices),
                sink_choices=tuple(t.sink_choices),
            )
            arrays = run.place_batch(batch)
            run.trainable, run.opt_state, metrics = step_fn(
                run.trainable, run.opt_state, run.frozen, arrays,
                jnp.int32(window), jnp.int32(sinks), jnp.int32(step - 1),
            )  # fmt: skip
            loss = float(metrics["loss"])
            profile.after(step)
            if not math.isfinite(loss):
                run.manager.wait_until_finished()
                raise TrainingError(
                    f"non-finite loss {loss} at step {step} (window {window}, sinks {sinks}); "
                    f"the last good checkpoint is step {run.manager.latest_step()}"
                )
            now = time.perf_counter()
            seconds, last_time = now - last_time, now
            rows, padded = arrays["input_ids"].shape
            record = {
                "step": step,
                "loss": loss,
                loss_name: loss,
                "grad_norm": float(metrics["grad_norm"]),
                "learning_rate": float(metrics["learning_rate"]),
                "window": window,
                "sinks": sinks,
                "valid_tokens": int(metrics["valid_tokens"]),
                "tokens_per_s": float(batch["lengths"].sum()) * jax.process_count() / seconds,
                "step_seconds": seconds,
                **utilization.of_step(rows, padded, window + sinks, seconds),
                "skipped_records": run.skips.count,
            }
            if step % t.log_every == 0 or step == t.steps:
                log.write(record)
            bar.set_postfix({loss_name: f"{loss:.4f}", "W": window, "S": sinks,
                             "tok/s": f"{record['tokens_per_s']:,.0f}"})  # fmt: skip
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


def main(argv) -> None:
    del argv
    if cli.config() is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        run = train(cli.config())
    except (ConfigError, FileNotFoundError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    what = "model" if run.config.train.objective == "pretrain" else "ahn"
    print(f"done: {run.config.train.steps} steps; weights in {run.output_dir / what}")
    if run.skips.count:
        print(f"skipped {run.skips.count} bad records (see the log for file:line)")


if __name__ == "__main__":
    cli.define_config_flag()
    app.run(main)
