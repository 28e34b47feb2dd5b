"""Ahead-of-time compiles for real TPU targets from a CPU host (needs `jax[tpu]`'s libtpu).

Lowering and compiling against a TPU topology runs Mosaic on our Pallas kernels for real: tiling,
lowering and VMEM limits are checked and `memory_analysis()` / `cost_analysis()` are TPU figures.
Nothing executes, so numerics and speed are not checked here.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kernels import pallas_mode

TOPOLOGIES = ("v5e:2x2", "v6e:2x2")


def single_chip_mesh(topology: str) -> Mesh:
    topo = topologies.get_topology_desc(topology, platform="tpu")
    return Mesh(np.array(topo.devices).reshape(-1)[:1], ("chip",))


def abstract(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def compile_for(topology: str, fn, *shapes_and_dtypes):
    """(lowered, compiled) of `fn` for one chip of `topology`, Pallas kernels through Mosaic."""
    mesh = single_chip_mesh(topology)
    args = [abstract(mesh, shape, dtype) for shape, dtype in shapes_and_dtypes]
    with pallas_mode.compiled_for_tpu(), jax.set_mesh(mesh):
        lowered = jax.jit(fn).lower(*args)
        return lowered, lowered.compile()


def scoped_vmem_bytes(topology: str, fn, *shapes_and_dtypes) -> int:
    """What Mosaic allocates in VMEM for our kernels in `fn`: compile under a 4 KiB cap and read
    the size from the out-of-memory error (the largest kernel's allocation)."""
    with pallas_mode.vmem_limit(4096):
        try:
            compile_for(topology, fn, *shapes_and_dtypes)
        except Exception as error:  # noqa: BLE001 - the error text is the measurement
            match = re.search(r"Scoped allocation with size ([0-9.]+)([KMG]?)", str(error))
            if match is None:
                raise
            scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)]
            return int(float(match.group(1)) * scale)
    return 4096
