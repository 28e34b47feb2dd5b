"""The blocked decay matrix equals the masked exp of prefix-sum differences (float64), and the
unit lower-triangular inverse a float64 solve: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checks import assert_close

from kernels.common.chunking import (
    decay_matrix,
    decay_to_end,
    masked_decayed_products,
    unit_lower_inverse,
)


def log_decays(kind: str, C: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(3, 2, C))
    g = {
        "mixed": -np.log1p(np.exp(rng.standard_normal((3, 2, C)))),
        "near_zero": -1e-4 * u,
        "strong": -20.0 - 10.0 * u,  # a chunk spans thousands of nats: factors underflow
        # mostly ~0, a few tokens that wipe the state: huge jumps inside one block
        "spikes": np.where(u > 0.9, -300.0, -1e-3 * u),
    }[kind]
    return g.astype(np.float32)


def oracle(g: np.ndarray, strict: bool) -> np.ndarray:
    """float64 e^(G_t - G_i), G the prefix sums of g, with the mask applied before exp."""
    G = np.cumsum(g.astype(np.float64), axis=-1)
    C = G.shape[-1]
    t, i = np.arange(C)[:, None], np.arange(C)[None, :]
    visible = t > i if strict else t >= i
    diff = G[..., :, None] - G[..., None, :]
    return np.where(visible, np.exp(np.where(visible, diff, -np.inf)), 0.0)


@pytest.mark.parametrize("C", [64, 256, 16, 40, 37, 134])  # blocks of 20, 1, 2 (67 blocks)
@pytest.mark.parametrize("kind", ["mixed", "near_zero", "strong", "spikes"])
@pytest.mark.parametrize("strict", [False, True])
def test_decay_matrix_equals_masked_exp(C, kind, strict):
    g = log_decays(kind, C)
    got = decay_matrix(jnp.asarray(g), strict=strict)
    want = oracle(g, strict)
    assert np.all(np.asarray(got)[np.asarray(want) == 0.0] == 0.0), "nonzero above the mask"
    assert_close(got, want, name=f"decay {kind} C={C}")


@pytest.mark.parametrize("C", [64, 256])
@pytest.mark.parametrize("kind", ["mixed", "strong", "spikes"])
def test_decay_matrix_gradient_equals_masked_exp(kind, C):
    g = log_decays(kind, C)
    weights = np.random.default_rng(1).standard_normal((C, C))

    def plain(g):  # float64, the masked exp of prefix-sum differences
        C = g.shape[-1]
        G = jnp.cumsum(g, axis=-1)
        visible = jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]
        diff = G[..., :, None] - G[..., None, :]
        return jnp.where(visible, jnp.exp(jnp.where(visible, diff, -1e300)), 0.0)

    got = jax.grad(lambda g: jnp.sum(decay_matrix(g, strict=False) * weights))(jnp.asarray(g))
    with jax.enable_x64(True):
        want = jax.grad(lambda g: jnp.sum(plain(g) * weights))(jnp.asarray(g, jnp.float64))
    assert_close(got, want, name=f"dg {kind}")


def test_masked_decayed_products_rows_strict_then_inclusive():
    rng = np.random.default_rng(2)
    C, H = 32, 8
    g = log_decays("mixed", C)
    lhs = rng.standard_normal((3, 2, 2 * C, H))
    rhs = rng.standard_normal((3, 2, C, H))
    got = masked_decayed_products(
        *(jnp.asarray(x, jnp.float32) for x in (lhs, rhs, g)), "highest", strict_rows=1
    )
    products = lhs @ np.swapaxes(rhs, -1, -2)
    want = products * np.concatenate([oracle(g, strict=True), oracle(g, strict=False)], axis=-2)
    assert_close(got, want, name="masked products")


@pytest.mark.parametrize("kind", ["mixed", "strong", "spikes"])
def test_decay_to_end_equals_suffix_products(kind):
    g = log_decays(kind, 64)
    G = np.cumsum(g.astype(np.float64), axis=-1)
    assert_close(decay_to_end(jnp.asarray(g)), np.exp(G[..., -1:] - G), name=f"to end {kind}")


@pytest.mark.parametrize("C", [64, 40])  # 40 is padded to 64 with identity rows
def test_unit_lower_inverse_and_its_gradient_equal_a_float64_solve(C):
    """(I + A)^-1 with A as the delta rule builds it (beta k k^T times decays, unit-norm k), and the
    hand-written VJP against the float64 solve's on the strict lower triangle (the rest is 0)."""
    rng = np.random.default_rng(3)
    k = rng.standard_normal((3, 2, C, 16))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(size=(3, 2, C, 1))
    A = np.tril(beta * (k @ np.swapaxes(k, -1, -2)) * oracle(log_decays("mixed", C), False), -1)
    weights = rng.standard_normal(A.shape)

    def solve(A):
        eye = jnp.eye(C, dtype=A.dtype)

        def one(a):
            return jax.lax.linalg.triangular_solve(
                eye + a, eye, left_side=True, lower=True, unit_diagonal=True
            )

        # one matrix per LAPACK call: jaxlib 0.10's batched LAPACK kernels split the batch over
        # XLA:CPU's thread pool and can deadlock it (docs/kernels.md, "Known issue")
        return jax.lax.map(one, A.reshape(-1, C, C)).reshape(A.shape)

    def loss(inverse, A):  # A's strict lower triangle is the input, as in the kernels
        return jnp.sum(inverse(jnp.tril(A, -1)) * weights)

    ours = jax.value_and_grad(lambda A: loss(lambda a: unit_lower_inverse(a, "highest"), A))
    value, grad = ours(jnp.asarray(A, jnp.float32))
    with jax.enable_x64(True):
        want_inverse = solve(jnp.asarray(A))
        want_value, want_grad = jax.value_and_grad(lambda A: loss(solve, A))(jnp.asarray(A))
    assert_close(unit_lower_inverse(jnp.asarray(A, jnp.float32), "highest"), want_inverse)
    assert_close(value, want_value, name="loss")
    assert_close(grad, want_grad, name="dA")
    assert np.all(np.asarray(grad)[..., np.triu(np.ones((C, C), bool))] == 0.0)
