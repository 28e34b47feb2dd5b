"""The donated decode step updates the cache where it lies on XLA:CPU: no array of it (k, v, the
shared gates, the states, the slot positions) is copied whole, at one row as at several. With
one row XLA rewrites gathers and scatters into forms it fuses and copies around (cache.py's
`_scatter_slots` and `DecodeCache.read_gates`): a 36-layer decode step was 1.7x slower."""

import functools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from shared import tiny_config

from ahn_jax.model.layerwise import for_decoding
from ahn_jax.model.transformer import decode_step, init_model
from ahn_jax.training import compiled_figures


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("mode", ["ahn", "swa"])
def test_decode_step_copies_no_cache_array(batch, mode):
    model = for_decoding(init_model(tiny_config(ahn_type="gdn", num_layers=2)))
    graphdef, state = nnx.split(model)
    cache = model.init_cache(batch, window=64, sinks=4, mode=mode)
    step = jax.jit(functools.partial(decode_step, graphdef), donate_argnums=(2,))
    compiled = step.lower(state, jnp.zeros((batch,), jnp.int32), cache).compile()
    shapes = [x.shape for x in jax.tree.leaves(cache)]
    assert compiled_figures.cache_copies(shapes, compiled)["cache_copies"] == 0
