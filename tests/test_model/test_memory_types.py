"""The tables that name the AHN types agree: a type added to one and not the others fails here,
not silently (built as another type, left out of a checkpoint or of the cost model)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from shared import tiny_config

from ahn_jax.checkpoints import ahn_weights
from ahn_jax.checkpoints.pretrained import param_shapes
from ahn_jax.config import AHN_TYPES, ConfigError
from ahn_jax.costs import formulas
from ahn_jax.model import memory
from ahn_jax.model.transformer import abstract_model


def test_every_table_names_the_same_types():
    assert set(memory.MEMORY_TYPES) == set(AHN_TYPES)
    assert set(ahn_weights.IMPLEMENTATIONS) == set(AHN_TYPES)
    assert set(ahn_weights._TENSORS) == set(AHN_TYPES)


def test_an_unknown_type_is_refused_by_name_not_built_as_another():
    config = tiny_config(ahn_type="gdn")
    object.__setattr__(config, "ahn_type", "linear")  # past the config's own check
    with pytest.raises(ValueError, match="'linear' has no entry in MEMORY_TYPES"):
        memory.make_memory(config, nnx.Rngs(0))
    with pytest.raises(ValueError, match="MEMORY_TYPES"):
        memory.gate_names("linear")


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_the_gates_the_checkpoint_names_and_the_costs_follow_the_built_memory(ahn_type):
    config = tiny_config(ahn_type=ahn_type)
    module = memory.make_memory(config, nnx.Rngs(0))
    xn = jnp.ones((1, 2, config.hidden_size))
    assert tuple(module.write_gates(xn)) == memory.gate_names(ahn_type)
    # every AHN weight of the model has a reference name (the checkpoint's table)
    ahn_paths = {p for p in param_shapes(config) if ahn_weights.is_ahn_param(p)}
    named = {m.path for m in ahn_weights.ahn_tensor_maps(config, param_shapes(config))}
    assert ahn_paths and named == ahn_paths
    # the cost model's gate projections are the module's D -> N weights
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(module, memory.AhnParam)))
    D, N = config.hidden_size, config.num_heads
    projections = [p for p, v in flat.items() if np.shape(v) == (D, N)]
    assert formulas._gate_projections(config) == len(projections), projections


def test_an_ahn_weight_without_a_reference_name_is_refused_on_save_and_load():
    config = tiny_config(ahn_type="gdn")
    shapes = param_shapes(config)
    shapes[("layers", "ahn", "extra")] = (config.num_layers, 4)
    with pytest.raises(ConfigError, match=r"\['layers.ahn.extra'\].*add them to _TENSORS"):
        ahn_weights.ahn_tensor_maps(config, shapes)


def test_every_trainable_ahn_weight_sits_where_the_checkpoint_reads_them():
    for ahn_type in AHN_TYPES:
        config = tiny_config(ahn_type=ahn_type)
        flat = traverse_util.flatten_dict(
            nnx.to_pure_dict(nnx.state(abstract_model(config), memory.AhnParam))
        )
        assert set(flat) == {p for p in param_shapes(config) if ahn_weights.is_ahn_param(p)}
