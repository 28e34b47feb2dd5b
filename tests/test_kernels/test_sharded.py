"""The kernels run under shard_map over batch and heads on 8 fake CPU devices, unchanged."""

import functools

import jax
import numpy as np
import pytest
from checks import assert_close
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from test_delta_rule import make_inputs as delta_inputs
from test_ssd import make_inputs as ssd_inputs
from test_window_attention import make_qkv

from kernels.delta_rule import gated_delta_rule
from kernels.ssd import ssd
from kernels.window_attention import sink_window_attention

MESH_AXES = {"data": 2, "tensor": 4}  # batch over "data", heads over "tensor"
BTH_ = P("data", None, "tensor", None)
BTH = P("data", None, "tensor")
STATE = P("data", "tensor", None, None)


def sharded(fn, in_specs, out_specs, check_vma=True):
    # the mesh ahn_jax would build for these axes: the kernels' tests need nothing from ahn_jax
    mesh = Mesh(np.array(jax.devices()).reshape(tuple(MESH_AXES.values())), tuple(MESH_AXES))
    return jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma)
    )


@pytest.mark.parametrize("impl", ["chunked", "batched", "pallas"])
def test_gated_delta_rule_sharded_over_batch_and_heads(impl):
    inputs = delta_inputs(40, N=4)

    def fn(*args):
        return gated_delta_rule(*args[:5], initial_state=args[5], output_final_state=True,
                                use_qk_l2norm=True, chunk_size=16, impl=impl)  # fmt: skip

    want = jax.jit(fn)(*inputs)
    # Pallas' CPU interpreter does not track varying manual axes (JAX's own advice: check_vma off)
    specs = (BTH_, BTH_, BTH_, BTH, BTH, STATE)
    got = sharded(fn, specs, (BTH_, STATE), check_vma=impl != "pallas")(*inputs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


def test_ssd_sharded_over_batch_and_heads():
    x, dt, A, B, C, state = ssd_inputs(40, N=4)

    def fn(x, dt, A, B, C, state):
        return ssd(x, dt, A, B, C, initial_state=state, output_final_state=True, chunk_size=16)

    specs = (BTH_, BTH, P("tensor"), BTH_, BTH_, STATE)
    want = jax.jit(fn)(x, dt, A, B, C, state)
    got = sharded(fn, specs, (BTH_, STATE))(x, dt, A, B, C, state)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


def test_window_attention_sharded_over_batch_and_heads():
    q, k, v = make_qkv(50, N=8, K=4)
    fn = functools.partial(sink_window_attention, window=9, sinks=3, impl="blocked",
                           block_size=16)  # fmt: skip
    want = fn(q, k, v)
    got = sharded(fn, (BTH_, BTH_, BTH_), BTH_)(q, k, v)
    assert_close(got, want)
    assert np.asarray(got).shape == q.shape


def test_zero_initial_state_varies_like_the_inputs():
    """Without an initial state the kernels start from zeros, which must still be a valid scan
    carry under shard_map (a carry that does not vary over the heads axis was a type error)."""
    q, k, v, g, beta, _ = delta_inputs(20, N=4)
    x, dt, A, B, C, _ = ssd_inputs(20, N=4)

    def fn(q, k, v, g, beta, x, dt, A, B, C):
        o, s = gated_delta_rule(q, k, v, g, beta, output_final_state=True, chunk_size=16)
        y, h = ssd(x, dt, A, B, C, output_final_state=True, chunk_size=16)
        return o, s, y, h

    specs = (BTH_, BTH_, BTH_, BTH, BTH, BTH_, BTH, P("tensor"), BTH_, BTH_)
    args = (q, k, v, g, beta, x, dt, A, B, C)
    want = jax.jit(fn)(*args)
    got = sharded(fn, specs, (BTH_, STATE, BTH_, STATE))(*args)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
