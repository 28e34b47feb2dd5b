"""`model.kernels`: one setting picks the forward's kernels, and the whole model through the
Pallas kernels (interpret mode on the CPU) equals the XLA path: logits of every mode, the
distillation loss and its gradients, per-row windows and sinks, and on a mesh (the kernels then
run per shard)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from shared import random_ids, tiny_config

from ahn_jax.config import ConfigError
from ahn_jax.model import kernel_choice
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.sharding import make_mesh, shard_module
from ahn_jax.model.transformer import init_model
from ahn_jax.training.losses import sequence_losses

# longer than one 128-token attention block and than one recurrence chunk of 64
T = 160
WINDOWS = (40, 130)
SINKS = (4, 0)


def assert_trees_close(actual, expected, tol):
    """Leaf by leaf, RMS-relative error <= tol (fla's metric, tests/test_kernels/checks.py)."""
    expected_leaves = dict(jax.tree.leaves_with_path(expected))
    for path, a in jax.tree.leaves_with_path(actual):
        a, e = np.asarray(a, np.float64), np.asarray(expected_leaves[path], np.float64)
        rel = np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30)
        assert rel <= tol, f"{jax.tree_util.keystr(path)}: RMS-relative error {rel:.2e}"


@pytest.mark.parametrize(
    ("kernels", "platform", "recurrence", "attention"),
    [
        ("auto", "cpu", "chunked", "blocked"),
        ("auto", "gpu", "batched", "blocked"),
        ("auto", "tpu", "pallas", "pallas"),
        ("xla", "cpu", "chunked", "blocked"),
        ("xla", "gpu", "batched", "blocked"),
        ("xla", "tpu", "batched", "blocked"),
        ("pallas", "cpu", "pallas", "pallas"),
        ("pallas", "tpu", "pallas", "pallas"),
    ],
)
def test_the_setting_resolves_per_platform(kernels, platform, recurrence, attention):
    assert kernel_choice.resolve(kernels, platform) == kernel_choice.Kernels(recurrence, attention)


def test_unknown_kernels_are_named():
    with pytest.raises(ConfigError, match="model.kernels must be one of"):
        tiny_config(kernels="triton")
    with pytest.raises(ValueError, match="kernels must be one of"):
        kernel_choice.resolve("fast", "cpu")
    with pytest.raises(ConfigError, match="kernels='pallas' selects TPU .* on a GPU"):
        kernel_choice.resolve("pallas", "gpu")


def test_cpu_default_is_the_xla_path():
    assert kernel_choice.resolve(tiny_config().kernels) == kernel_choice.Kernels(
        "chunked", "blocked"
    )


def pair(ahn_type):
    """The same weights with each kernel choice."""
    return tuple(
        init_model(tiny_config(ahn_type=ahn_type, kernels=k), seed=0, ahn_output_init="normal")
        for k in ("xla", "pallas")
    )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def loss_and_grads(graphdef, trainable, frozen, ids, window, sinks):
    def loss(trainable):
        model = nnx.merge(graphdef, trainable, frozen)
        return jnp.mean(sequence_losses(model, ids, ids, window=window, sinks=sinks))

    return jax.value_and_grad(loss)(trainable)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode"))
def logits(graphdef, state, ids, window, sinks, *, mode):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return model.logits(ids, positions, mode=mode, window=window, sinks=sinks)


# gradients through GDN's kernels (DN runs the same ones with g = 0; the SSD's Pallas scan is the
# delta rule's with w = 0, its gradients tested in tests/test_kernels): the XLA side's compile is
# most of this test's time
@pytest.mark.parametrize(("ahn_type", "with_grads"), [("gdn", True), ("dn", False),
                                                      ("mamba2", False)])  # fmt: skip
def test_pallas_model_equals_xla_model(ahn_type, with_grads):
    ids = jnp.asarray(random_ids(64, (2, T), seed=1))
    window, sinks = jnp.asarray(WINDOWS, jnp.int32), jnp.asarray(SINKS, jnp.int32)
    results = []
    for model in pair(ahn_type):
        graphdef, state = nnx.split(model)
        outs = {mode: logits(graphdef, state, ids, window, sinks, mode=mode)
                for mode in ("full", "swa", "ahn")}  # fmt: skip
        if with_grads:
            graphdef, trainable, frozen = nnx.split(model, AhnParam, ...)
            outs["loss"], outs["grads"] = loss_and_grads(graphdef, trainable, frozen, ids, window,
                                                         sinks)  # fmt: skip
        results.append(outs)
    xla, pallas = results
    if with_grads:
        # the KL of a tiny random model is ~5e-5 nats, a difference of log-softmaxes of size ~1:
        # its fp32 rounding is absolute (~1e-8), not relative to the loss
        loss_xla, loss_pallas = float(xla.pop("loss")), float(pallas.pop("loss"))
        assert loss_xla > 0 and abs(loss_pallas - loss_xla) < 1e-7
        # the gradients of that loss inherit its rounding: a looser bound than the logits'
        assert_trees_close(pallas.pop("grads"), xla.pop("grads"), tol=1e-4)
    assert_trees_close(pallas, xla, tol=1e-5)


def test_pallas_model_on_a_mesh_equals_one_device():
    model = pair("gdn")[1]
    ids = jnp.asarray(random_ids(64, (4, T), seed=2))
    window = jnp.asarray((40, 130, 7, 160), jnp.int32)
    sinks = jnp.asarray((4, 0, 2, 1), jnp.int32)
    graphdef, state = nnx.split(model)
    alone = logits(graphdef, state, ids, window, sinks, mode="ahn")
    mesh = make_mesh({"fsdp": 2, "tensor": 2, "data": 2})
    graphdef, state = nnx.split(shard_module(model, mesh))
    with jax.set_mesh(mesh):
        sharded = logits(graphdef, state, ids, window, sinks, mode="ahn")
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(alone), rtol=2e-5, atol=2e-5)
