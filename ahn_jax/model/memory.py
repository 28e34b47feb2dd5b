"""Artificial Hippocampus Networks: the per-layer memory of evicted tokens (docs/method.md
§Method, §Variants).

An AHN has no projections of its own for q/k/v: it reads the layer's RoPE'd query at the current
position and the RoPE'd key/value of the token leaving the window (repeated to every query head).
Its write gates come from the evicted token's normalised hidden state, its output gate from the
current token's; its output [.., N, H] is added to the attention output before the frozen o_proj.

Three memories share one interface:
  write_gates(xn)            -> gate dict, each [B, T, N] fp32 (what the decode cache stores)
  recurrence(q, k, v, gates, state, impl) -> (o [B, T, N, H], final state [B, N, H, H] fp32)
  output(o, xn)              -> y [B, T, N, H]
All-zero gates are the identity write (beta = 0 and log-decay 0; Mamba2's dt = 0), which is how
positions that evict nothing pass through the recurrence without touching the state.

Every weight is an `AhnParam`, the one variable type that trains; they are kept in fp32 whatever
the base model's dtype. Parameter names follow the reference (`model.layers.{i}.ahn.fn.<name>`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ahn_jax.config import ModelConfig
from ahn_jax.model.kernel_choice import per_shard
from kernels import delta_rule, ssd

INIT_STDDEV = 0.02  # HF `_init_weights` for the gate projections (docs/method.md §Variants)
NORM_EPS = 1e-5  # fla's FusedRMSNormSwishGate and mamba's RMSNormGated
OUTPUT_INITS = ("zeros", "normal")


class AhnParam(nnx.Param):
    """A trainable AHN weight. Training differentiates and optimizes this type only (the base
    weights are plain `nnx.Param`, so `nnx.grad` and `nnx.Optimizer` left at their default
    `wrt=nnx.Param` would train the base too: pass `wrt=AhnParam`, as training/step.py does)."""


def _normal(rngs, shape):
    return INIT_STDDEV * jax.random.normal(rngs.params(), shape, jnp.float32)


def _output_projection(rngs, N, H, output_init):
    if output_init not in OUTPUT_INITS:
        raise ValueError(f"ahn output init must be one of {OUTPUT_INITS}, got {output_init!r}")
    value = _normal(rngs, (N, H, H)) if output_init == "normal" else jnp.zeros((N, H, H))
    return AhnParam(value, logical_axes=("heads", "head_dim", "head_dim_out"))


def _gate_projection(rngs, D, N):
    return AhnParam(_normal(rngs, (D, N)), logical_axes=("embed", "heads"))


def _per_head(value):
    return AhnParam(jnp.asarray(value, jnp.float32), logical_axes=("heads",))


def _linear(x_BTD, kernel):
    return jnp.einsum("BTD,DN->BTN", x_BTD.astype(jnp.float32), kernel[...])


def _group_linear(y_BTNH, kernel_NHO, dtype):
    return jnp.einsum("BTNH,NHO->BTNO", y_BTNH, kernel_NHO[...]).astype(dtype)


def _rms_normalize(x, axis):
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + NORM_EPS)


def _softplus_inverse(x):
    return x + jnp.log(-jnp.expm1(-x))


class DeltaMemory(nnx.Module):
    """AHN-GDN (`gated=True`) and AHN-DN: a (gated) delta rule with q/k l2-normalised inside."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, *, gated: bool, output_init: str):
        D, N, H = config.hidden_size, config.num_heads, config.head_dim
        self.gated = gated
        if gated:
            self.a_proj = _gate_projection(rngs, D, N)
            # fla's GatedDeltaNet init: A ~ U(0, 16] (1 - u keeps log finite), dt log-uniform
            # in [1e-3, 0.1] floored at 1e-4, stored as softplus^-1(dt)
            A = 16.0 * (1.0 - jax.random.uniform(rngs.params(), (N,)))
            self.A_log = _per_head(jnp.log(A))
            u = jax.random.uniform(rngs.params(), (N,))
            dt = jnp.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_bias = _per_head(_softplus_inverse(jnp.maximum(dt, 1e-4)))
            self.D = _per_head(jnp.ones((N,)))  # present in the reference, unused by it too
        self.b_proj = _gate_projection(rngs, D, N)
        self.g_proj = _gate_projection(rngs, D, N)
        self.o_norm = AhnParam(jnp.ones((H,), jnp.float32), logical_axes=("head_dim",))
        self.o_proj = _output_projection(rngs, N, H, output_init)

    def write_gates(self, xn_BTD):
        gates = {"beta": jax.nn.sigmoid(_linear(xn_BTD, self.b_proj))}
        if self.gated:
            alpha_in = _linear(xn_BTD, self.a_proj) + self.dt_bias[...]
            gates["log_alpha"] = -jnp.exp(self.A_log[...]) * jax.nn.softplus(alpha_in)
        return gates

    def recurrence(self, q, k, v, gates, state, impl):
        g = gates["log_alpha"] if self.gated else jnp.zeros_like(gates["beta"])
        run = functools.partial(_delta_rule, impl=impl)
        return _kernel_call(run, impl, (q, k, v, g, gates["beta"], state), "BTNH BTNH BTNH BTN BTN")

    def output(self, o_BTNH, xn_BTD):
        gamma = _linear(xn_BTD, self.g_proj)[..., None]  # one scalar per head
        y = _rms_normalize(o_BTNH.astype(jnp.float32), -1) * self.o_norm[...]
        return _group_linear(y * jax.nn.silu(gamma), self.o_proj, xn_BTD.dtype)


class Mamba2Memory(nnx.Module):
    """AHN-Mamba2: SSD with B = normalised k, C = normalised q, x = v, no D term, no scale."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, *, output_init: str):
        D, N, H = config.hidden_size, config.num_heads, config.head_dim
        self.dt_proj = _gate_projection(rngs, D, N)
        self.dt_proj_bias = _per_head(jnp.zeros((N,)))
        self.g_proj = _gate_projection(rngs, D, N)
        self.g_proj_bias = _per_head(jnp.zeros((N,)))
        self.dt_bias = _per_head(jnp.ones((N,)))
        self.A_log = _per_head(jnp.log(jnp.arange(1, N + 1, dtype=jnp.float32)))
        self.norm = AhnParam(jnp.ones((N, H), jnp.float32), logical_axes=("heads", "head_dim"))
        self.o_proj = _output_projection(rngs, N, H, output_init)

    def write_gates(self, xn_BTD):
        dt_in = _linear(xn_BTD, self.dt_proj) + self.dt_proj_bias[...] + self.dt_bias[...]
        return {"dt": jax.nn.softplus(dt_in)}

    def recurrence(self, q, k, v, gates, state, impl):
        def normalize(x):  # torch F.normalize: x / max(|x|, 1e-12)
            x = x.astype(jnp.float32)
            return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

        A = -jnp.exp(self.A_log[...])
        run = functools.partial(_ssd, impl=impl)
        return _kernel_call(run, impl, (v, gates["dt"], A, normalize(k), normalize(q), state),
                            "BTNH BTN N BTNH BTNH")  # fmt: skip

    def output(self, o_BTNH, xn_BTD):
        z = _linear(xn_BTD, self.g_proj) + self.g_proj_bias[...]
        gated = o_BTNH.astype(jnp.float32) * jax.nn.silu(z)[..., None]
        y = _rms_normalize(gated, (-2, -1)) * self.norm[...]  # one group over all N * H
        return _group_linear(y, self.o_proj, xn_BTD.dtype)


def _delta_rule(q, k, v, g, beta, state, *, impl):
    return delta_rule.gated_delta_rule(
        q, k, v, g, beta, initial_state=state, output_final_state=True, use_qk_l2norm=True,
        impl=impl,
    )  # fmt: skip


def _ssd(x, dt, A, B, C, state, *, impl):
    return ssd.ssd(x, dt, A, B, C, initial_state=state, output_final_state=True, impl=impl)


def _kernel_call(run, impl, args, layouts):
    """`run(*args)`, the last argument the initial state [B, N, H, E] or None. A Pallas kernel
    runs per shard under a mesh (ahn_jax/model/kernel_choice.py); XLA's forms are partitioned
    by XLA itself."""
    if impl != "pallas":
        return run(*args)
    heads = args[0].shape[2]
    return per_shard(run, args, (*layouts.split(), "BNHE"), ("BTNH", "BNHE"), head_counts=(heads,))


@dataclasses.dataclass(frozen=True)
class MemoryType:
    """How one `ahn.type` is built, and the write gates its `write_gates` returns (the decode
    cache keeps them per slot; each comes from one D -> N projection of the evicted token, and
    the output gate from one more: what the cost model counts)."""

    build: Callable[..., nnx.Module]  # (config, rngs, *, output_init) -> the memory
    gates: tuple[str, ...]


# every type of config.AHN_TYPES, one entry each (tests/test_model/test_memory_types.py checks
# this table against the config's types, the checkpoint names and the modules built)
MEMORY_TYPES = {
    "gdn": MemoryType(functools.partial(DeltaMemory, gated=True), ("beta", "log_alpha")),
    "dn": MemoryType(functools.partial(DeltaMemory, gated=False), ("beta",)),
    "mamba2": MemoryType(Mamba2Memory, ("dt",)),
}


def memory_type(ahn_type: str) -> MemoryType:
    try:
        return MEMORY_TYPES[ahn_type]
    except KeyError:
        raise ValueError(
            f"ahn.type {ahn_type!r} has no entry in MEMORY_TYPES (ahn_jax/model/memory.py); "
            f"known: {sorted(MEMORY_TYPES)}"
        ) from None


def make_memory(config: ModelConfig, rngs: nnx.Rngs, output_init: str = "zeros"):
    return memory_type(config.ahn_type).build(config, rngs, output_init=output_init)


def gate_names(ahn_type: str) -> tuple[str, ...]:
    return memory_type(ahn_type).gates


def recurrence_impl(num_items: int, chunked: str = "chunked") -> str:
    """The reference's switch (docs/method.md §Variants): token by token for short inputs, the
    `chunked` form (the kernel choice's, ahn_jax/model/kernel_choice.py) beyond."""
    return "recurrent" if num_items <= 64 else chunked


def repeat_kv(x_BTKH, num_heads):
    """Each query head gets its kv group's copy (HF `repeat_kv`: head n reads group n // G)."""
    return jnp.repeat(x_BTKH, num_heads // x_BTKH.shape[2], axis=2)
