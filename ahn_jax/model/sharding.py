"""Meshes and the logical-axis rules that place parameters and activations on them.

Parameters carry `logical_axes` metadata (`embed`, `heads`, `mlp`, ...); a rule maps each logical
name to mesh axes (`data`, `fsdp`, `tensor`). A mesh axis is used for a dimension only if it is in
the mesh, not already used by another dimension of the same array, and divides the dimension, so
one set of rules serves every model size and mesh shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes, in order of preference. Unlisted names are replicated.
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "layers": (),
    "head_dim": (),
    "norm": (),
    "length": (),
}


class MeshError(ValueError):
    """The requested mesh does not fit the devices at hand."""


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with the named axes; its size must equal the number of devices (no silent idling)."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = [name for name in axis_sizes if name not in MESH_AXES]
    if unknown:
        raise MeshError(f"mesh axes {unknown} are not known; allowed: {MESH_AXES}")
    bad = {name: size for name, size in axis_sizes.items() if int(size) < 1}
    if bad:
        raise MeshError(f"mesh axis sizes must be >= 1, got {bad}")
    total = math.prod(int(s) for s in axis_sizes.values())
    if total != len(devices):
        raise MeshError(
            f"mesh {dict(axis_sizes)} needs {total} devices but {len(devices)} are available "
            f"({devices[0].platform}); make the product of the mesh axes equal the device count"
        )
    shape = tuple(int(s) for s in axis_sizes.values())
    return Mesh(_device_grid(shape, devices), tuple(axis_sizes))


def _device_grid(shape: tuple[int, ...], devices: list[jax.Device]) -> np.ndarray:
    """The devices arranged in `shape`: on TPUs along the chips' physical torus (jax's
    mesh_utils, as MaxText builds its meshes: neighbours on a mesh axis are neighbours on the
    interconnect), where it can map the shape; elsewhere, or where it cannot, in their order."""
    if devices[0].platform == "tpu":
        try:
            return mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError):  # a shape off the torus
            pass
    return np.array(devices).reshape(shape)


def partition_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Mapping[str, Sequence[str]] = DEFAULT_RULES,
) -> PartitionSpec:
    """The PartitionSpec of one array from its logical axis names and its shape.

    For each dimension, the mesh axes that its name's rule lists are tried in order; an axis is
    taken only if the mesh has it, no earlier dimension of this array took it (a mesh axis may
    shard one dimension only), and the product of the axes already chosen for this dimension
    times its size divides the dimension. An axis that fails is skipped, not an error: that part
    of the dimension stays replicated. So one rule table fits every model size and mesh shape:
    2 kv heads on `tensor=4` stay replicated, `batch` spreads over `data` and `fsdp` when both
    divide it. Unnamed dimensions and names without a rule are replicated. Each entry is None, one
    axis name, or a tuple of names."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape, strict=True):
        chosen = []
        for axis in rules.get(name, ()) if name else ():
            size = mesh.shape.get(axis)
            if size is None or axis in used:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
                chosen.append(axis)
                used.add(axis)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    while spec and spec[-1] is None:  # the form jit returns arrays in: P(x), not P(x, None)
        spec.pop()
    return PartitionSpec(*spec)


def _logical_axes(variable: nnx.Variable, ndim: int) -> tuple[str | None, ...]:
    axes = variable.get_metadata().get("logical_axes")
    return tuple(axes) if axes is not None else (None,) * ndim


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
    """NamedSharding for every variable of a (possibly abstract) nnx.State, from its metadata."""

    def sharding_of(variable):
        value = variable.get_value()
        axes = _logical_axes(variable, len(value.shape))
        return variable.replace(NamedSharding(mesh, partition_spec(axes, value.shape, mesh, rules)))

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """The module with every variable placed on `mesh` according to the rules."""
    graphdef, state = nnx.split(module)
    shardings = state_shardings(state, mesh, rules)
    return nnx.merge(graphdef, jax.device_put(state, shardings))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules=DEFAULT_RULES) -> jax.Array:
    """Sharding constraint on an activation; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, partition_spec(logical_axes, x.shape, mesh, rules))
