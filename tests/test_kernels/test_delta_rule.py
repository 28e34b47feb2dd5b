"""Gated delta rule and delta rule: chunked, batched (and Pallas) equal the naive recurrence, with
grads; the batched form scans only the state."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checks import assert_close

from kernels.delta_rule import delta_rule, gated_delta_rule, gated_delta_rule_step, naive

ARGNAMES = ("q", "k", "v", "g", "beta", "initial_state")
FAST_IMPLS = ("chunked", "batched")  # the XLA chunked forms


def make_inputs(T, *, B=2, N=2, H=16, E=8, gate="mixed", beta="mixed", seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k = (jnp.asarray(rng.standard_normal((B, T, N, H)), dtype) for _ in range(2))
    v = jnp.asarray(rng.standard_normal((B, T, N, E)), dtype)
    u = rng.uniform(size=(B, T, N))
    g = {
        "mixed": -np.log1p(np.exp(rng.standard_normal((B, T, N)))),
        "near_zero": -1e-4 * u,
        "strong": -20.0 - 10.0 * u,
    }[gate]
    b = {
        "mixed": 1 / (1 + np.exp(-rng.standard_normal((B, T, N)))),
        "zero": np.zeros((B, T, N)),
        "one": np.ones((B, T, N)),
    }[beta]
    state = rng.standard_normal((B, N, H, E))
    return q, k, v, *(jnp.asarray(x, jnp.float32) for x in (g, b, state))


@functools.partial(jax.jit, static_argnames=("impl", "with_state", "chunk_size", "l2"))
def run(impl, inputs, with_state=True, chunk_size=16, l2=True):
    q, k, v, g, b, state = inputs
    return gated_delta_rule(
        q, k, v, g, b,
        initial_state=state if with_state else None,
        output_final_state=True, use_qk_l2norm=l2, chunk_size=chunk_size, impl=impl,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def grads(impl, inputs, chunk_size=16):
    def loss(*args):
        o, final = run(impl, args, chunk_size=chunk_size)
        return jnp.sum(jnp.sin(o)) + 0.1 * jnp.sum(final**2)

    return jax.grad(loss, argnums=tuple(range(6)))(*inputs)


CASES = [
    # T, chunk, gate, beta, with initial state
    (37, 64, "mixed", "mixed", True),  # T < chunk
    (50, 16, "mixed", "mixed", False),  # T not a multiple of the chunk, no state
    (64, 16, "near_zero", "mixed", True),
    (40, 16, "strong", "mixed", True),
    (100, 64, "strong", "mixed", True),  # several decay blocks per chunk, factors underflow
    (130, 64, "near_zero", "one", False),
    (33, 16, "mixed", "zero", True),
    (33, 16, "mixed", "one", True),
]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("T, chunk, gate, beta, with_state", CASES)
def test_chunked_equals_recurrent(T, chunk, gate, beta, with_state, impl):
    inputs = make_inputs(T, gate=gate, beta=beta)
    o_ref, s_ref = run("recurrent", inputs, with_state)
    o, s = run(impl, inputs, with_state, chunk)
    assert_close(o, o_ref, name="o")
    assert_close(s, s_ref, name="final state")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("T, chunk, gate, beta", [(50, 16, "mixed", "mixed"),
                                                  (40, 16, "strong", "one"),
                                                  (24, 16, "near_zero", "zero"),
                                                  (70, 32, "strong", "mixed")])  # fmt: skip
def test_chunked_gradients_equal_recurrent(T, chunk, gate, beta, impl):
    inputs = make_inputs(T, gate=gate, beta=beta)
    reference = grads("recurrent", inputs)
    for name, got, want in zip(ARGNAMES, grads(impl, inputs, chunk), reference, strict=True):
        assert_close(got, want, name=f"d{name}")


def test_without_l2norm_and_custom_scale():
    q, k, v, g, b, state = make_inputs(30)
    q, k = 0.3 * q, 0.3 * k  # unnormalised keys must stay in the delta rule's stable range
    ref = gated_delta_rule(q, k, v, g, b, scale=0.5, impl="recurrent", initial_state=state)
    out = gated_delta_rule(q, k, v, g, b, scale=0.5, chunk_size=8, initial_state=state)
    assert_close(out[0], ref[0])
    assert ref[1] is None and out[1] is None
    out = gated_delta_rule(q, k, v, g, b, scale=0.5, chunk_size=8, initial_state=state,
                           impl="batched")  # fmt: skip
    assert_close(out[0], ref[0], name="batched")
    assert out[1] is None


def test_bf16_inputs_within_fla_thresholds():
    inputs = make_inputs(50, dtype=jnp.bfloat16)
    o_ref, s_ref = run("recurrent", tuple(x.astype(jnp.float32) for x in inputs))
    for impl in ("chunked", "batched", "pallas"):
        o, s = run(impl, inputs)
        assert o.dtype == jnp.bfloat16
        assert_close(o, o_ref, tol=0.005, name=f"{impl} o")
        assert_close(s, s_ref, tol=0.005, name=f"{impl} state")


def test_step_equals_one_recurrent_step_and_chains():
    q, k, v, g, b, state = make_inputs(6)
    o_ref, s_ref = run("recurrent", (q, k, v, g, b, state))
    s = state
    for t in range(6):
        o_t, s = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], b[:, t], s,
                                       use_qk_l2norm=True)  # fmt: skip
        assert_close(o_t, o_ref[:, t], name=f"o[{t}]")
    assert_close(s, s_ref, name="state")


@pytest.mark.parametrize(
    "gate, beta", [("mixed", "mixed"), ("strong", "one"), ("near_zero", "zero")]
)
def test_two_pass_step_equals_the_oracle_step(gate, beta):
    """A single token (decoding) takes the regrouped two-pass step: equal to the math's step."""
    q, k, v, g, b, state = make_inputs(1, gate=gate, beta=beta, seed=3)
    o, final = run("recurrent", (q, k, v, g, b, state), l2=False)
    o_ref, s_ref = naive.step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], b[:, 0], state, 16**-0.5)
    assert_close(o[:, 0], o_ref, name="o")
    assert_close(final, s_ref, name="state")


def test_delta_rule_is_gated_with_zero_decay():
    q, k, v, _, b, state = make_inputs(45)
    zero_g = jnp.zeros(b.shape)
    ref = gated_delta_rule(q, k, v, zero_g, b, initial_state=state, impl="recurrent",
                           use_qk_l2norm=True, output_final_state=True)  # fmt: skip
    for impl in FAST_IMPLS:
        out = delta_rule(q, k, v, b, initial_state=state, chunk_size=16, use_qk_l2norm=True,
                         impl=impl, output_final_state=True)  # fmt: skip
        assert_close(out[0], ref[0], name=f"{impl} o")
        assert_close(out[1], ref[1], name=f"{impl} state")


def test_beta_zero_leaves_state_decayed_only():
    q, k, v, g, _, state = make_inputs(20)
    decayed = state * jnp.exp(jnp.sum(g, axis=1))[..., None, None]
    for impl in FAST_IMPLS:
        _, final = run(impl, (q, k, v, g, jnp.zeros(g.shape), state))
        np.testing.assert_allclose(np.asarray(final), np.asarray(decayed), rtol=1e-5, atol=1e-6)


def test_bad_shapes_and_impl():
    q, k, v, g, b, state = make_inputs(8)
    with pytest.raises(ValueError, match="impl must be one of"):
        gated_delta_rule(q, k, v, g, b, impl="fast")
    with pytest.raises(ValueError, match="g must be"):
        gated_delta_rule(q, k, v, g[:, :4], b)
    with pytest.raises(ValueError, match="initial_state must be"):
        gated_delta_rule(q, k, v, g, b, initial_state=state[:, :1])


@pytest.mark.parametrize(
    "T, chunk, gate, beta", [(50, 16, "mixed", "mixed"), (20, 64, "strong", "one")]
)
def test_pallas_equals_recurrent_forward_and_backward(T, chunk, gate, beta):
    """The Pallas inter-chunk scan (interpret mode on CPU) against the oracle, all gradients."""
    inputs = make_inputs(T, gate=gate, beta=beta)
    o_ref, s_ref = run("recurrent", inputs, True, chunk)
    o, s = run("pallas", inputs, True, chunk)
    assert_close(o, o_ref, name="o")
    assert_close(s, s_ref, name="state")
    reference = grads("recurrent", inputs, chunk)
    for name, got, want in zip(ARGNAMES, grads("pallas", inputs, chunk), reference, strict=True):
        assert_close(got, want, name=f"d{name}")


def sub_jaxprs(eqn):
    """The jaxprs nested in an equation's parameters (jit, custom_vjp, checkpoint, scan bodies)."""
    for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
            sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
            if hasattr(sub, "eqns"):
                yield sub


def scan_equations(jaxpr):
    """Every `scan` equation in a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            yield eqn
        for sub in sub_jaxprs(eqn):
            yield from scan_equations(sub)


def value_shapes(jaxpr):
    """The shapes of every value in a jaxpr, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in (*eqn.invars, *eqn.outvars) if hasattr(v.aval, "shape"))
        for sub in sub_jaxprs(eqn):
            yield from value_shapes(sub)


def assert_thin_scans(fn, args, *, n_scans, Q, C):
    """`fn`'s jaxpr has `n_scans` scans, each over the Q chunks, and no [C, C] value in their
    bodies: the intra-chunk work is batched outside the scans."""
    scans = list(scan_equations(jax.make_jaxpr(fn)(*args).jaxpr))
    assert [eqn.params["length"] for eqn in scans] == [Q] * n_scans
    for eqn in scans:
        shapes = set(value_shapes(eqn.params["jaxpr"].jaxpr))
        assert not [shape for shape in shapes if list(shape).count(C) >= 2], shapes


def test_batched_scans_only_the_state():
    """One scan over the chunks forward, one more backward (the custom VJP), none holding [C, C]
    intra-chunk work (C = 32 differs from every other dim here)."""
    T, C = 100, 32
    inputs = make_inputs(T)

    def loss(*args):
        o, final = run("batched", args, chunk_size=C)
        return jnp.sum(o) + jnp.sum(final)

    assert_thin_scans(loss, inputs, n_scans=1, Q=4, C=C)
    assert_thin_scans(jax.grad(loss, argnums=tuple(range(6))), inputs, n_scans=2, Q=4, C=C)


@pytest.mark.parametrize("impl", ["chunked", "batched", "pallas"])
def test_no_lapack_call_in_the_compiled_gradient(impl):
    """XLA:CPU's LAPACK kernels (its batched triangular solve) split a batch over the intra-op
    pool and can deadlock it (docs/kernels.md, "Known issue"): no impl may compile to one."""
    inputs = make_inputs(40)

    def loss(*args):
        o, final = run(impl, args)
        return jnp.sum(o) + jnp.sum(final)

    hlo = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).lower(*inputs).compile().as_text()
    targets = set(re.findall(r'custom_call_target="([^"]+)"', hlo))
    assert not [t for t in targets if "lapack" in t.lower()], targets
