"""Per-row windows and sinks in the parallel forward: `model(ids, window=w_B, sinks=s_B)` computes
each row as if it were called alone with its own scalar pair (docs/method.md §Training), padded
rows included, gradients included, with one compiled program for every draw."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from shared import random_ids, tiny_config

from ahn_jax.config import AHN_TYPES
from ahn_jax.model import transformer as model_lib
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.transformer import init_model

T = 40
# right-padded rows of two real lengths; windows and sinks from "memory from t = 3" to "none"
LENGTHS = (40, 23, 40, 23)
WINDOWS = (5, 3, 12, 30)
SINKS = (3, 0, 4, 2)


def make(ahn_type, **changes):
    return init_model(tiny_config(ahn_type=ahn_type, **changes), seed=0, ahn_output_init="normal")


def padded_ids():
    ids = random_ids(64, (len(LENGTHS), T), seed=3)
    for b, length in enumerate(LENGTHS):
        ids[b, length:] = 0
    return jnp.asarray(ids)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode"))
def logits_and_grads(graphdef, trainable, frozen, ids, window, sinks, weights, *, mode):
    """The logits and the gradient w.r.t. the AHN weights of sum(weights * logits)."""

    def loss(trainable):
        model = nnx.merge(graphdef, trainable, frozen)
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        logits = model.logits(ids, positions, mode=mode, window=window, sinks=sinks)
        return jnp.sum(weights * logits), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
    return logits, grads


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_per_row_windows_equal_each_row_alone_with_gradients(ahn_type):
    graphdef, trainable, frozen = nnx.split(make(ahn_type), AhnParam, ...)
    ids = padded_ids()
    real = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
    rng = np.random.default_rng(4)
    weights = jnp.asarray(rng.normal(size=(len(LENGTHS), T, 64)) * real[..., None], jnp.float32)
    windows, sinks = jnp.asarray(WINDOWS, jnp.int32), jnp.asarray(SINKS, jnp.int32)
    logits, grads = logits_and_grads(
        graphdef, trainable, frozen, ids, windows, sinks, weights, mode="ahn"
    )
    summed = jax.tree.map(jnp.zeros_like, grads)
    for b, length in enumerate(LENGTHS):
        row = slice(b, b + 1)
        alone, alone_grads = logits_and_grads(
            graphdef, trainable, frozen, ids[row, :length], jnp.int32(WINDOWS[b]),
            jnp.int32(SINKS[b]), weights[row, :length], mode="ahn",
        )  # fmt: skip
        np.testing.assert_allclose(logits[b, :length], alone[0], atol=2e-5, err_msg=f"row {b}")
        summed = jax.tree.map(jnp.add, summed, alone_grads)
    # the loss is a sum over rows: the batch's gradient is the sum of the rows' gradients
    for path, got in nnx.to_flat_state(grads):
        want = dict(nnx.to_flat_state(summed))[path]
        assert path[-1] == "D" or np.any(np.asarray(got[...]) != 0), path  # D is unused
        np.testing.assert_allclose(got[...], want[...], atol=1e-5, rtol=1e-4, err_msg=str(path))


def test_per_row_swa_equals_each_row_alone():
    model = make("gdn")
    ids = padded_ids()
    windows, sinks = jnp.asarray(WINDOWS, jnp.int32), jnp.asarray(SINKS, jnp.int32)
    logits = model(ids, mode="swa", window=windows, sinks=sinks)
    for b, length in enumerate(LENGTHS):
        alone = model(ids[b : b + 1, :length], mode="swa", window=WINDOWS[b], sinks=SINKS[b])
        np.testing.assert_allclose(logits[b, :length], alone[0], atol=2e-5, err_msg=f"row {b}")
    # rows whose window covers them are plain causal attention
    full = model(ids)
    covered = jnp.asarray([T, 2, T, 1], jnp.int32), jnp.asarray([0, T, 0, T], jnp.int32)
    np.testing.assert_allclose(model(ids, mode="swa", window=covered[0], sinks=covered[1]), full,
                               atol=2e-6)  # fmt: skip


def test_many_per_row_draws_share_one_compiled_forward():
    model = make("gdn")
    ids = padded_ids()
    model(ids, mode="ahn", window=4, sinks=0)  # a scalar pair runs the per-row program too
    before = model_lib.forward._cache_size()
    rng = np.random.default_rng(5)
    for _ in range(4):
        windows = jnp.asarray(rng.integers(1, T, len(LENGTHS)), jnp.int32)
        sinks = jnp.asarray(rng.integers(0, 8, len(LENGTHS)), jnp.int32)
        model(ids, mode="ahn", window=windows, sinks=sinks)
    model(ids, mode="ahn", window=7, sinks=2)
    assert model_lib.forward._cache_size() == before


def test_full_attention_layers_see_everything_in_every_row():
    everywhere = make("gdn", full_attention_layers=(0, 1, 2))
    ids = padded_ids()
    windows, sinks = jnp.asarray(WINDOWS, jnp.int32), jnp.asarray(SINKS, jnp.int32)
    np.testing.assert_allclose(
        everywhere(ids, mode="ahn", window=windows, sinks=sinks), everywhere(ids), atol=1e-6
    )


def test_per_row_values_are_checked():
    model = make("gdn")
    ids = padded_ids()
    with pytest.raises(ValueError, match=r"window must be a scalar or one value per row \(4,\)"):
        model(ids, mode="ahn", window=jnp.asarray([4, 5]), sinks=0)
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        model(ids, mode="ahn", window=jnp.asarray([4, 0, 3, 3]), sinks=0)
    with pytest.raises(ValueError, match="sinks must be >= 0, got -1"):
        model(ids, mode="swa", window=4, sinks=np.asarray([0, 0, -1, 0]))
