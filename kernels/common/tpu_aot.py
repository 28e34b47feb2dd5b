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

from kernels.common import pallas_mode

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


def scoped_vmem_bytes(topology: str, fn, *shapes_and_dtypes, max_tries: int = 8) -> int | None:
    """The largest scoped VMEM allocation Mosaic makes for our kernels in `fn`.

    Compiles under a VMEM cap that starts at 4 KiB; each failure names the allocation that did not
    fit, the cap is raised just above it, and so on until everything fits. None if the first
    compile already fits."""
    cap, largest = 4096, None
    for _ in range(max_tries):

        def fresh(*args):  # a new function object: jit must retrace under the new cap
            return fn(*args)

        with pallas_mode.vmem_limit(cap):
            try:
                compile_for(topology, fresh, *shapes_and_dtypes)
                return largest
            except Exception as error:  # noqa: BLE001 - the error text is the measurement
                match = re.search(r"Scoped allocation with size ([0-9.]+)([KMG]?)", str(error))
                if match is None:
                    raise
                number, unit = match.groups()
                scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit]
                largest = int(float(number) * scale)
                # the size is printed rounded ("1.20M"): above it by one unit of its last digit
                decimals = len(number.partition(".")[2])
                cap = largest + int(scale * 10.0**-decimals) + 4096
    raise RuntimeError(f"VMEM allocations still growing after {max_tries} compiles")
