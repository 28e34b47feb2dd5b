"""A training run's state and its set-up: the base with fresh AHN weights on the mesh, the
optimizer, the data iterator, the checkpoint manager (restoring the latest checkpoint)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    check_objective,
    check_vocabulary,
    run_configs,
    validate_config,
)
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.sharding import partition_spec, shard_module
from ahn_jax.model.transformer import init_model
from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer
from ahn_jax.training import data, data_files, windows
from ahn_jax.training.checkpointing import restore_latest
from ahn_jax.training.distributed import (
    check_batch_layout,
    initialize_distributed,
    make_train_mesh,
    on_mesh,
)
from ahn_jax.training.optimizer import init_on_mesh, optimizer_for

# What `Run.place_batch` puts on the mesh: the rows, and each row's window and sinks (docs/method.md
# §Training: every sequence draws its own pair).
ROW_ARRAYS = ("input_ids", "labels", "window", "sinks")


def load_base(t: TrainConfig, model_config: ModelConfig, mesh=None):
    """The frozen base (a checkpoint, or the config's random init) with fresh AHN weights drawn
    from the seed, placed on `mesh` by the logical-axis rules when one is given. A checkpoint that
    holds AHN weights of the config's type itself (a merged directory, or convert's Orbax output
    of one) brings them instead, as `from_pretrained` and the reference's loading read it, and
    training continues from them."""
    if t.base_checkpoint:
        return from_pretrained(
            t.base_checkpoint,
            ahn_type=model_config.ahn_type,
            full_attention_layers=model_config.full_attention_layers,
            seed=t.seed,
            dtype=model_config.jnp_param_dtype,
            compute_dtype=model_config.jnp_dtype,
            remat_policy=model_config.remat_policy,
            kernels=model_config.kernels,
            mesh=mesh,
        )
    model = init_model(model_config, seed=t.seed)
    return model if mesh is None else shard_module(model, mesh)


# What a base checkpoint decides: its weights' shapes, which a config's `model` section must name
# as they are, and the settings the model reads with them, which the checkpoint's config.json
# gives (a config file's differing value is reported and not used)
BASE_SHAPES = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
               "num_kv_heads", "head_dim", "tie_word_embeddings")  # fmt: skip
BASE_SETTINGS = ("rms_norm_eps", "rope_theta", "max_position_embeddings", "rope_scaling")


def reconcile_base(model_config: ModelConfig, loaded: ModelConfig, base: str) -> ModelConfig:
    """The run's ModelConfig with a base checkpoint: the config file's, with the checkpoint's
    BASE_SETTINGS. A shape that differs is an error naming each field: the run would otherwise
    train and export a model other than the one the config file describes."""

    def differing(names):
        pairs = [(name, getattr(model_config, name), getattr(loaded, name)) for name in names]
        return [f"{name} {ours!r} (config) vs {theirs!r} (checkpoint)"
                for name, ours, theirs in pairs if ours != theirs]  # fmt: skip

    if shapes := differing(BASE_SHAPES):
        raise ConfigError(
            f"train.base_checkpoint {base} is not the model of the config's model section: "
            f"{'; '.join(shapes)}. Set those model.* fields as its config.json has them"
        )
    if settings := differing(BASE_SETTINGS):
        logging.warning("the base checkpoint's settings are used: %s", "; ".join(settings))
    return model_config.replace(**{name: getattr(loaded, name) for name in BASE_SETTINGS})


def length_buckets(t: TrainConfig) -> tuple[int, ...]:
    """Batch lengths: each batch is padded to the smallest that holds its longest row, so the
    step's work follows the real lengths (one compile per bucket; windows are drawn from each
    row's own length, not from the bucket). Processes pad their rows alone, so several processes
    use the largest only: the rows of one global batch must agree on its length."""
    buckets = t.length_buckets or (t.seq_len,)
    return buckets if jax.process_count() == 1 else (max(buckets),)


def tokenizer_for(d: DataConfig, t: TrainConfig, vocab_size: int):
    """The data's tokenizer, whose ids must fit the model's vocabulary (`vocab_size`)."""
    if d.tokenizer == "bytes":
        tokenizer, source = ByteTokenizer(), "data.tokenizer = 'bytes'"
    else:
        directory = d.tokenizer_dir or t.base_checkpoint
        if not directory:
            raise ConfigError("data.tokenizer = 'checkpoint' needs train.base_checkpoint")
        tokenizer, source = HFTokenizer.from_dir(directory), f"{directory}/tokenizer.json"
    check_vocabulary(tokenizer.vocab_size, vocab_size, source)
    return tokenizer


@dataclasses.dataclass
class Run:
    config: ConfigDict  # the config file's sections as given (saved with each checkpoint)
    model_config: ModelConfig
    train: TrainConfig
    data: DataConfig
    graphdef: nnx.GraphDef
    trainable: nnx.State  # what the optimizer updates: the AHN weights (the base: pretraining)
    frozen: nnx.State
    opt_state: optax.OptState
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    iterator: grain.DatasetIterator
    manager: ocp.CheckpointManager
    output_dir: Path
    skips: data.SkipCounter
    samples: int | None = None  # records in the data's source, where known (the start lines)
    start_step: int = 0
    step_fn: Callable | None = None  # the jitted train step, once made
    mesh: jax.sharding.Mesh | None = None
    passes: data.DataPasses = dataclasses.field(default_factory=data.DataPasses)
    # data.paths' fingerprints as the run found them (saved with every checkpoint)
    data_fingerprints: list[str] = dataclasses.field(default_factory=list)
    # resumed with another config than the checkpoint's: "section.field: saved -> now" each
    changed_settings: list[str] = dataclasses.field(default_factory=list)
    # resumed on another learning-rate schedule: what that does to the next step's rate
    rate_change: str | None = None

    def place_batch(self, batch: dict) -> dict:
        """The step's arrays: the rows ("input_ids", "labels" [B, T]) with each row's "window"
        and "sinks" ([B]), all split over the mesh's data-parallel axes alike, so a row's pair
        sits on the devices that hold the row (pretraining draws no pair: the rows alone)."""
        local = {k: batch[k] for k in ROW_ARRAYS if k in batch}
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in local.items()}
        rows = local["input_ids"].shape[0] * jax.process_count()
        placed = {}
        for name, value in local.items():
            global_shape = (rows, *value.shape[1:])
            axes = ("batch",) + (None,) * (value.ndim - 1)
            sharding = NamedSharding(self.mesh, partition_spec(axes, global_shape, self.mesh))
            # each process holds its own rows of the global batch
            placed[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
        return placed


def source_size(dataset) -> int | None:
    """The records the data pipeline reads from (its root dataset's length, before filtering),
    or None where the pipeline does not know it (e.g. several sources mixed by grain)."""
    while getattr(dataset, "parents", None):
        if len(dataset.parents) > 1:
            return None
        dataset = dataset.parents[0]
    try:
        size = len(dataset)
    except TypeError:
        return None
    return size if size < sys.maxsize else None


def setup(config: ConfigDict) -> Run:
    """The run of a config ConfigDict: its sections checked and typed, the model, optimizer, data
    and checkpoint manager made, and the latest checkpoint in its output directory restored."""
    model_config = validate_config(config)
    t, d = run_configs(config)
    pretrain = t.objective == "pretrain"
    check_objective(model_config, t)
    windows.check_some_row_learns(t, d)
    initialize_distributed(t)
    mesh = make_train_mesh(t.mesh)
    check_batch_layout(t, mesh, jax.process_count())
    output_dir = Path(t.output_dir).absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_base(t, model_config, mesh)
    if t.base_checkpoint:
        model_config = reconcile_base(model_config, model.config, t.base_checkpoint)
    # distillation trains the AHN weights only; pretraining every weight of the base
    graphdef, trainable, frozen = nnx.split(model, nnx.Param if pretrain else AhnParam, ...)
    tx, schedule = optimizer_for(t)
    # moments placed like their weights, scalars such as Adam's count on every device, as the
    # step returns them (and `compile_check` places them): the first step compiles once, and a
    # checkpoint restores onto these placements
    with on_mesh(mesh):
        opt_state = init_on_mesh(tx, trainable, mesh)
    if mesh is None:
        # everything committed to the one device, as the step's outputs are: a loaded base is,
        # jit's outputs are not, and the second step would compile again for the difference
        device = jax.devices()[0]
        trainable, frozen, opt_state = jax.device_put((trainable, frozen, opt_state), device)
    skips, passes = data.SkipCounter(), data.DataPasses()
    dataset = data.make_dataset(
        d,
        tokenizer_for(d, t, model_config.vocab_size),
        batch_size=t.batch_size // jax.process_count(),
        seed=t.seed,
        buckets=length_buckets(t),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        skips=skips,
        passes=passes,
    )
    iterator = iter(dataset)
    samples = source_size(dataset)
    manager = _checkpoint_manager(output_dir / "checkpoints", t.keep_checkpoints)
    run = Run(config, model_config, t, d, graphdef, trainable, frozen, opt_state, tx, schedule,
              iterator, manager, output_dir, skips, samples, mesh=mesh, passes=passes,
              data_fingerprints=data_files.fingerprints(d.paths))  # fmt: skip
    restore_latest(run)
    return run


def _checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=True,
            # a step is final once its commit file is written, not by renaming its directory:
            # gcsfuse (the pods' shared OUTPUT_DIR) refuses directory renames on a flat bucket
            # unless mounted with --rename-dir-limit, and then copies every file
            atomicity_options=ocp.options.AtomicityOptions(
                mode=ocp.options.AtomicityMode.COMMIT_FILE
            ),
        ),
    )
