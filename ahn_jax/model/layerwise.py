"""The model's layers cut into one module per layer, for the cached path on the CPU (prefill and
decode steps, ahn_jax/model/cached.py): `for_decoding` and `unstack_layers`."""

from __future__ import annotations

import jax
from flax import nnx


def for_decoding(model):
    """The model as the decode loop should hold it: on the CPU, `unstack_layers(model)`; on other
    backends the model itself (the per-layer copy would double the weights in accelerator
    memory). A model already unstacked is returned as it is."""
    unstacked = isinstance(model.layers, nnx.List)
    return unstack_layers(model) if jax.default_backend() == "cpu" and not unstacked else model


def unstack_layers(model):
    """The model with its stacked layers cut into a list of per-layer modules, for the cached
    path (prefill and decode steps; not the parallel forward, which scans the stacked layers).

    The cached path runs its layers unrolled (ahn_jax/model/cached.py); given the stacked
    weights it slices each layer's out inside every step, and XLA:CPU copies each slice (on the
    ~50M model 1.4-1.8 ms per 3 MB matrix, a third of a decode step: docs/benchmarks.md). Cut
    here once, each layer's weights reach the jitted step as arrays of their own. Everything
    but the layer weights is shared with `model`; the layer weights are copied."""
    graphdef, state = nnx.split(model)
    layer_graphdef, layer_state = nnx.split(model.layers)
    layerwise = nnx.merge(graphdef, state)  # new Variables around the same arrays
    layerwise.layers = nnx.List(
        nnx.merge(layer_graphdef, jax.tree.map(lambda a, i=i: a[i], layer_state))
        for i in range(model.config.num_layers)
    )
    return layerwise
