"""Scan carries under `shard_map`: a carry built from constants must vary like the inputs."""

from __future__ import annotations

import jax


def vary_like(x: jax.Array, inputs) -> jax.Array:
    """`x` cast to vary over every shard_map manual axis that any of `inputs` varies over (outside
    shard_map: `x` itself). A scan's or cond's carry must keep its type, and a carry that starts as
    zeros but depends on varying inputs after one step would not."""
    # jax 0.10's spelling of an aval's varying manual axes (older releases had `.vma`)
    missing = set().union(*(jax.typeof(a).mat.varying for a in inputs)) - jax.typeof(x).mat.varying
    return jax.lax.pcast(x, tuple(sorted(missing)), to="varying") if missing else x
