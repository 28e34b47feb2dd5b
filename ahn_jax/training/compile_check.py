"""Will the train step fit? Compile it ahead of time for a TPU topology, from a CPU host.

  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5p-8 \
      [--mesh=fsdp=4] [--seq_len=24576] [--batch_size=4] [--json]

Needs `jax[tpu]`'s libtpu (the `tpu` or `test` extra) and JAX_PLATFORMS=cpu; nothing runs on a TPU.
The whole jitted step of `ahn_jax.train` (teacher and student forwards, KL loss, backward, AdamW) is
lowered with abstract, sharded inputs (frozen weights in the config's dtype, AHN weights and
optimizer state in fp32) and compiled by XLA:TPU for the topology's chips; the report is XLA's own
per-device memory analysis against the chip's HBM. An HBM overflow is a compile error, reported as
"does not fit". What this cannot tell: speed and numerics (nothing executes), and host-side memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec

from ahn_jax.config import ConfigError, TrainConfig, validate_config
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.sharding import MeshError, make_mesh, partition_spec, state_shardings
from ahn_jax.model.transformer import abstract_model
from ahn_jax.training.distributed import parse_mesh
from ahn_jax.training.optimizer import optimizer_for
from ahn_jax.training.step import make_train_step

# Cloud TPU names -> the topology descriptions libtpu accepts (it takes e.g. "v5p:2x2x1", not
# "v5p-8"; launch/README.md).
TOPOLOGY_ALIASES = {
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
    "v5p-8": "v5p:2x2x1",
    "v5p-16": "v5p:2x2x2",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
}
# HBM per chip, bytes (Cloud TPU documentation).
HBM_BYTES = {"v4": 32 * 2**30, "v5p": 95 * 2**30, "v5e": 16 * 2**30, "v6e": 32 * 2**30}


def topology_devices(name: str):
    description = TOPOLOGY_ALIASES.get(name, name)
    try:
        topology = topologies.get_topology_desc(description, platform="tpu")
    except Exception as e:  # noqa: BLE001 - libtpu's message is the useful part
        if "lockfile" in str(e):  # libtpu serves one process at a time
            raise ConfigError(f"libtpu is busy in another process: {e}") from e
        raise ConfigError(
            f"--topology {name!r} is not a TPU topology libtpu knows ({e}); try one of "
            f"{sorted(TOPOLOGY_ALIASES)} or a description like 'v5p:2x2x1'"
        ) from e
    return description, list(topology.devices)


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def check(config, topology: str, mesh_spec: str = "", seq_len=None, batch_size=None) -> dict:
    """Compile the train step of a config ConfigDict for `topology`; XLA's per-device memory
    figures and the verdict. `mesh_spec`, `seq_len` and `batch_size` default to the config's."""
    model_config = validate_config(config)
    t = TrainConfig.from_dict(config.train.to_dict())
    seq_len = seq_len or t.seq_len
    batch_size = batch_size or t.batch_size
    description, devices = topology_devices(topology)
    mesh_spec = mesh_spec or t.mesh or f"fsdp={len(devices)}"
    try:
        mesh = make_mesh(parse_mesh(mesh_spec), devices)
    except MeshError as e:
        raise ConfigError(f"mesh {mesh_spec!r} on {topology}: {e}") from e

    graphdef, trainable, frozen = nnx.split(abstract_model(model_config), AhnParam, ...)
    trainable = _abstract(trainable, state_shardings(trainable, mesh))
    frozen = _abstract(frozen, state_shardings(frozen, mesh))
    tx, schedule = optimizer_for(t)
    with jax.set_mesh(mesh):
        # the optimizer state's placement is what tx.init gives the sharded AHN weights
        init = jax.jit(tx.init).lower(trainable).compile()
        opt_state = _abstract(jax.eval_shape(tx.init, trainable), init.output_shardings)
        batch_shape = (batch_size, seq_len)
        rows = NamedSharding(mesh, partition_spec(("batch", None), batch_shape, mesh))
        batch = {k: jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=rows)
                 for k in ("input_ids", "labels")}  # fmt: skip
        # each row's window and sinks, split over the mesh like the rows
        per_row = NamedSharding(mesh, partition_spec(("batch",), (batch_size,), mesh))
        for k in ("window", "sinks"):
            batch[k] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=per_row)
        scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
        step = make_train_step(graphdef, tx, schedule, t)
        lowered = step.lower(trainable, opt_state, frozen, batch, scalar)
        report = {
            "topology": topology,
            "description": description,
            "chips": len(devices),
            "device_kind": devices[0].device_kind,
            "mesh": dict(mesh.shape),
            "seq_len": seq_len,
            "batch_size": batch_size,
            "micro_batches": t.micro_batches,
            "param_dtype": model_config.param_dtype,
        }
        generation = description.split(":")[0]
        hbm = HBM_BYTES.get(generation)
        report["hbm_bytes_per_chip"] = hbm
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - XLA:TPU reports HBM overflow as a compile error
            if "memory" not in str(e).lower():
                raise
            report.update(fits=False, error=str(e).splitlines()[0][:500])
            return report
    report.update(_memory_and_flops(compiled))
    report["fits"] = hbm is None or report["peak_bytes_per_chip"] <= hbm
    return report


def _memory_and_flops(compiled) -> dict:
    """XLA's per-device memory figures of a compiled step, their peak, and its FLOPs."""
    memory = compiled.memory_analysis()
    figures = {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "generated_code_bytes": memory.generated_code_size_in_bytes,
    }
    figures["peak_bytes_per_chip"] = (
        figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
        + figures["temp_bytes"] + figures["generated_code_bytes"]
    )  # fmt: skip
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {**figures, "flops_per_chip": float(cost.get("flops", np.nan))}


def _gib(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    """The report as the lines `python -m ahn_jax.compile_check` prints."""
    lines = [f"train step on {report['topology']} ({report['description']}, "
             f"{report['chips']} x {report['device_kind']}), mesh {report['mesh']}, "
             f"batch {report['batch_size']} x {report['seq_len']} tokens "
             f"({report['micro_batches']} micro-batches)"]  # fmt: skip
    if "error" in report:
        return "\n".join([*lines, f"does NOT fit: {report['error']}"])
    for name in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes",
                 "peak_bytes_per_chip"):  # fmt: skip
        lines.append(f"  {name:22s} {_gib(report[name])}")
    lines.append(f"  HBM per chip           {_gib(report['hbm_bytes_per_chip'])}")
    lines.append(f"  XLA FLOPs per chip     {report['flops_per_chip']:.3e}")
    lines.append("fits" if report["fits"] else "does NOT fit")
    return "\n".join(lines)
