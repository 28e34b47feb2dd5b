"""Sharded parameters on a (2, 4) mesh of fake CPU devices give the single-device logits."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from shared import random_ids, save_tiny_qwen2, tiny_config

import ahn_jax
from ahn_jax.model.sharding import MeshError, make_mesh, partition_spec, shard_module


def test_eight_fake_devices():
    assert jax.device_count() == 8


def test_fsdp_tensor_mesh_matches_single_device(tmp_path):
    save_tiny_qwen2(tmp_path, num_attention_heads=8, num_key_value_heads=4, vocab_size=96)
    ids = random_ids(96, shape=(4, 16))
    single = np.asarray(ahn_jax.from_pretrained(tmp_path)(ids))

    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = ahn_jax.from_pretrained(tmp_path, mesh=mesh)
    q = model.layers.attn.q_kernel[...]
    assert q.sharding.spec == P(None, "fsdp", "tensor")  # trailing Nones dropped, as jit returns
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 2, 8)
    assert model.embed_tokens[...].sharding.spec == P("tensor", "fsdp")
    with jax.set_mesh(mesh):
        sharded = np.asarray(model(ids))
    np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=0)


def test_shard_module_places_an_initialised_model():
    from ahn_jax.model.transformer import init_model

    config = tiny_config(intermediate_size=64, num_layers=2, num_kv_heads=4)
    model = init_model(config)
    ids = random_ids(64, shape=(2, 6))
    before = np.asarray(model(ids))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = shard_module(model, mesh)
    assert sharded.layers.mlp.up_kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    with jax.set_mesh(mesh):
        np.testing.assert_allclose(np.asarray(sharded(ids)), before, atol=1e-5, rtol=0)


def test_partition_spec_skips_axes_that_do_not_divide():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    # 6 heads cannot split 4 ways: replicated on tensor, embed still on fsdp
    assert partition_spec(("embed", "heads", "head_dim"), (32, 6, 8), mesh) == P("fsdp")
    assert partition_spec(("batch", "length"), (4, 16), mesh) == P("fsdp")
    assert partition_spec((None, "mlp"), (3, 8), mesh) == P(None, "tensor")


def test_mesh_must_match_device_count():
    with pytest.raises(MeshError, match="needs 6 devices but 8 are available"):
        make_mesh({"fsdp": 2, "tensor": 3})
    with pytest.raises(MeshError, match="not known"):
        make_mesh({"model": 8})


def test_tpu_meshes_follow_the_chips_torus_and_cpu_ones_the_device_order():
    """On TPUs a mesh axis follows the interconnect (jax's mesh_utils, as MaxText lays its
    meshes), not the order the devices are listed in; other platforms keep their order."""
    from jax.experimental import mesh_utils

    from ahn_jax.training.tpu_topologies import topology_devices

    _, chips = topology_devices("v5p-16")  # 8 chips, a 2x2x2 torus
    mesh = make_mesh({"fsdp": 2, "tensor": 4}, chips)
    assert (mesh.devices == mesh_utils.create_device_mesh((2, 4), chips)).all()
    assert not (mesh.devices == np.array(chips).reshape(2, 4)).all()
    for row in mesh.devices:  # each tensor group: one 2x2 face of the torus
        assert any(len({chip.coords[axis] for chip in row}) == 1 for axis in range(3))
    cpus = jax.devices()
    assert (make_mesh({"fsdp": 2, "tensor": 4}, cpus).devices == np.array(cpus).reshape(2, 4)).all()
