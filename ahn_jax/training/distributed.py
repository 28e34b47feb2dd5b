"""Several processes and devices: joining a multi-process run, the training mesh, gathering the
rows that other processes hold."""

from __future__ import annotations

import contextlib
import math

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ahn_jax.config import ConfigError, TrainConfig
from ahn_jax.model.sharding import DEFAULT_RULES, MeshError, make_mesh


def initialize_distributed(t: TrainConfig) -> None:
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


def parse_mesh(spec: str, name: str = "train.mesh") -> dict[str, int]:
    """ "data=2,fsdp=4,tensor=1" -> {"data": 2, "fsdp": 4, "tensor": 1}; errors name the setting
    `name` it came from."""
    sizes = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        axis, _, size = part.partition("=")
        if not size.strip().isdigit():
            raise ConfigError(f"{name} = {spec!r}: {part!r} is not axis=size")
        if axis.strip() in sizes:  # the last one won
            raise ConfigError(f"{name} = {spec!r} names axis {axis.strip()!r} twice")
        sizes[axis.strip()] = int(size)
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


def check_batch_layout(t: TrainConfig, mesh: jax.sharding.Mesh | None, processes: int) -> None:
    """Several processes each read their own rows of every global batch, which is placed split
    over the mesh's batch axes (DEFAULT_RULES["batch"]): both must divide train.batch_size, or
    rows would be dropped or the first step would fail placing them, after the base is loaded and
    the step compiled."""
    if processes == 1:
        return
    if t.batch_size % processes:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be a multiple of the process count "
            f"({processes}): each process reads its own rows"
        )
    shards = 1 if mesh is None else batch_shards(mesh)
    if t.batch_size % shards:
        axes = " x ".join(DEFAULT_RULES["batch"])
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be a multiple of the mesh's {axes} "
            f"({shards}) with several processes: train.mesh = {t.mesh!r}"
        )


def row_split_warning(t: TrainConfig, mesh: jax.sharding.Mesh | None) -> str | None:
    """A warning when the rows a step computes at once (one micro-batch: train.batch_size /
    train.micro_batches) do not divide the mesh's batch axes: the devices cannot each take rows of
    their own, and what does not divide is replicated (partition_spec), which is legal but repeats
    work. None when they divide, or without a mesh."""
    if mesh is None:
        return None
    rows = t.batch_size // t.micro_batches
    if (split := unsplit_rows(rows, mesh)) is None:
        return None
    axes, shards = split
    return (
        f"warning: {rows} rows per micro-batch (train.batch_size {t.batch_size} / "
        f"train.micro_batches {t.micro_batches}) do not divide the mesh's {axes} ({shards}): "
        f"devices repeat each other's rows; a multiple of {shards} rows per micro-batch gives "
        "each device its own"
    )


def batch_shards(mesh: jax.sharding.Mesh) -> int:
    """How many pieces the mesh's batch axes (DEFAULT_RULES["batch"]) cut a batch into."""
    return math.prod(mesh.shape.get(a, 1) for a in DEFAULT_RULES["batch"])


def unsplit_rows(rows: int, mesh: jax.sharding.Mesh) -> tuple[str, int] | None:
    """(the mesh's batch axes, their size) when `rows` do not divide over them, else None."""
    axes = [a for a in DEFAULT_RULES["batch"] if a in mesh.shape]
    shards = batch_shards(mesh)
    return None if rows % shards == 0 else (" x ".join(axes) or "batch axes", shards)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's rows of a per-row array, concatenated (process 0's first): each process
    holds only its own rows, and the logged distribution of windows is the global batch's."""
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))
