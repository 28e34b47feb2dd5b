"""Our Pallas kernels compile through Mosaic for real TPU generations (v5e, v6e) at the 3B model's
head sizes, forward and backward: lowering, (8, 128) tiling and VMEM are checked; nothing runs."""

import jax
import jax.numpy as jnp
import pytest

from kernels.common import inter_chunk_pallas, tpu_aot
from kernels.window_attention import sink_window_attention

f32 = jnp.float32
# Qwen2.5-3B: 16 query heads, 2 kv heads, head dim 128; AHN states are 128 x 128 per query head.
HEADS, KV_HEADS, HEAD_DIM, CHUNK, CHUNKS = 16, 2, 128, 64, 8


def scan_shapes():
    BN, Q, C, H = HEADS, CHUNKS, CHUNK, HEAD_DIM
    shapes = [(BN, Q, C, H), (BN, Q, C, H), (BN, Q, C, H), (BN, Q, C, C), (BN, Q, C, H),
              (BN, Q, 1, H), (BN, H, H)]  # fmt: skip
    return [(s, f32) for s in shapes]


def scan_forward_and_backward(*args):
    outputs, vjp = jax.vjp(
        lambda *a: inter_chunk_pallas.scan_flat(*a, jax.lax.Precision.HIGHEST), *args
    )
    return outputs, vjp(jax.tree.map(jnp.ones_like, outputs))


def splash_forward_and_backward(q, k, v):
    def loss(q, k, v):
        return jnp.sum(sink_window_attention(q, k, v, window=256, sinks=128, impl="splash"))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


def ssd_scan_forward_and_backward(u, *rest):
    """SSD's scan: no delta correction, so no w (kernels built without it)."""
    return scan_forward_and_backward(u, None, *rest)


@pytest.mark.parametrize("topology", tpu_aot.TOPOLOGIES)
@pytest.mark.parametrize("family", ["delta_rule", "ssd"])
def test_scan_compiles_for_tpu(topology, family):
    shapes = scan_shapes()
    function = scan_forward_and_backward
    if family == "ssd":
        function, shapes = ssd_scan_forward_and_backward, [shapes[0], *shapes[2:]]
    lowered, compiled = tpu_aot.compile_for(topology, function, *shapes)
    assert lowered.as_text().count("tpu_custom_call") == 2  # forward and reverse kernels
    assert compiled.memory_analysis().temp_size_in_bytes < 64 * 2**20
    vmem = tpu_aot.scoped_vmem_bytes(topology, function, *shapes)
    assert vmem is not None and 4096 < vmem < 16 * 2**20  # far inside every generation's VMEM


@pytest.mark.parametrize("topology", tpu_aot.TOPOLOGIES)
def test_splash_window_compiles_for_tpu(topology):
    T = 1024
    q = ((1, T, HEADS, HEAD_DIM), f32)
    kv = ((1, T, KV_HEADS, HEAD_DIM), f32)
    lowered, compiled = tpu_aot.compile_for(topology, splash_forward_and_backward, q, kv, kv)
    assert lowered.as_text().count("tpu_custom_call") >= 3  # forward, dq and dkv kernels
    assert compiled.cost_analysis()["flops"] > 0


def test_pallas_delta_rule_under_shard_map_compiles_on_four_chips():
    """The whole op (chunked JAX + Pallas scan), sharded over batch and heads on a v5e 2x2 slice,
    forward and backward, with shard_map's varying-axes checks on."""
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from kernels.common import pallas_mode
    from kernels.delta_rule import gated_delta_rule

    topo = topologies.get_topology_desc("v5e:2x2", platform="tpu")
    mesh = Mesh(np.array(topo.devices).reshape(2, 2), ("data", "tensor"))
    bthd, bth, state = (
        P("data", None, "tensor", None),
        P("data", None, "tensor"),
        P("data", "tensor"),
    )

    def op(q, k, v, g, beta, s):
        return gated_delta_rule(q, k, v, g, beta, initial_state=s, output_final_state=True,
                                use_qk_l2norm=True, impl="pallas")  # fmt: skip

    sharded = jax.shard_map(
        op, mesh=mesh, in_specs=(bthd, bthd, bthd, bth, bth, state), out_specs=(bthd, state)
    )

    def loss(*args):
        o, s = sharded(*args)
        return jnp.sum(o) + jnp.sum(s)

    B, T, H = 2, 256, HEAD_DIM
    specs = [((B, T, HEADS, H), bthd)] * 3 + [((B, T, HEADS), bth)] * 2
    specs.append(((B, HEADS, H, H), state))
    args = [jax.ShapeDtypeStruct(s, f32, sharding=NamedSharding(mesh, p)) for s, p in specs]
    with pallas_mode.compiled_for_tpu(), jax.set_mesh(mesh):
        lowered = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).lower(*args)
        lowered.compile()
    assert lowered.as_text().count("tpu_custom_call") == 2
