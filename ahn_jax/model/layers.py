"""Qwen2/Qwen2.5 building blocks: RMSNorm, RoPE, attention projections, SwiGLU MLP.

Weights are stored in the layout their einsums read (`q_kernel` is [D, N, H]), each `nnx.Param`
carrying `logical_axes` metadata that `sharding.py` maps to mesh axes. Shape letters:
docs/method.md §Shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahn_jax.config import ModelConfig
from ahn_jax.config.model import YarnScaling

INIT_STDDEV = 0.02  # transformers' `initializer_range` for Qwen2


def _param(rngs: nnx.Rngs | None, shape, logical_axes, config: ModelConfig, init: str) -> nnx.Param:
    dtype = config.jnp_param_dtype
    if init == "normal":
        value = INIT_STDDEV * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = jnp.ones(shape, dtype)
    return nnx.Param(value, logical_axes=logical_axes)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, statistics in fp32, as transformers' Qwen2RMSNorm."""

    def __init__(self, dim: int, config: ModelConfig):
        self.eps = config.rms_norm_eps
        self.scale = _param(None, (dim,), ("norm",), config, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * normed


def rope_tables(
    positions_BT: jax.Array, head_dim: int, theta: float, scaling: YarnScaling | None = None
):
    """cos/sin tables [B, T, H] in fp32 for absolute positions (half-split layout of HF); with YaRN
    `scaling`, its frequencies and both tables times its attention factor, as transformers."""
    if scaling is None:
        exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
        inv_freq = 1.0 / (theta**exponents)
        attention_factor = 1.0
    else:
        inv_freq, attention_factor = yarn_frequencies(head_dim, theta, scaling)
    angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    if attention_factor == 1.0:
        return jnp.cos(angles), jnp.sin(angles)
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def model_rope_tables(positions_BT: jax.Array, config: ModelConfig):
    """`rope_tables` with a model's RoPE settings (theta, and YaRN when it has it)."""
    return rope_tables(positions_BT, config.head_dim, config.rope_theta, config.rope_scaling)


def _yarn_attention_factor(s: YarnScaling) -> float:
    if s.attention_factor is not None:
        return float(s.attention_factor)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    # truthiness as transformers tests it: a 0 or missing mscale falls back to factor alone
    if s.mscale and s.mscale_all_dim:
        return float(mscale(s.factor, s.mscale) / mscale(s.factor, s.mscale_all_dim))
    return mscale(s.factor)


def yarn_frequencies(head_dim: int, theta: float, s: YarnScaling) -> tuple[np.ndarray, float]:
    """(inv_freq [H/2] fp32, attention factor) of transformers' `_compute_yarn_parameters`, step
    for step in fp32 like its torch code, so tables and logits match it (not just the paper): the
    dims rotating fewer than beta_slow times over `original_max_position_embeddings` positions are
    interpolated (frequency / factor), those rotating more than beta_fast times kept, a linear ramp
    between. Plain numpy: the settings are static, so this is a constant of the trace."""
    dim, original = head_dim, s.original_max_position_embeddings

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    f32 = np.float32
    pos_freqs = f32(theta) ** (np.arange(0, dim, 2).astype(f32) / f32(dim))
    extrapolation = f32(1.0) / pos_freqs
    interpolation = f32(1.0) / (f32(s.factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1)
    keep = (f32(1) - ramp).astype(f32)  # 1: extrapolate (keep the frequency), 0: interpolate
    inv_freq = interpolation * (f32(1) - keep) + extrapolation * keep
    return inv_freq.astype(f32), _yarn_attention_factor(s)


def apply_rope(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    half = x_BTNH.shape[-1] // 2
    x32 = x_BTNH.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_BTH[:, :, None, :] + rotated * sin_BTH[:, :, None, :]
    return out.astype(x_BTNH.dtype)


class AttentionProjections(nnx.Module):
    """q/k/v projections with bias, o projection without: the weights of a Qwen2 attention block."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        D, N, K, H = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_kernel = _param(rngs, (D, N, H), ("embed", "heads", "head_dim"), config, "normal")
        self.q_bias = _param(rngs, (N, H), ("heads", "head_dim"), config, "zeros")
        self.k_kernel = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), config, "normal")
        self.k_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), config, "zeros")
        self.v_kernel = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), config, "normal")
        self.v_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), config, "zeros")
        self.o_kernel = _param(rngs, (N, H, D), ("heads", "head_dim", "embed"), config, "normal")

    def qkv(self, x_BTD: jax.Array):
        dtype = x_BTD.dtype
        q = jnp.einsum("BTD,DNH->BTNH", x_BTD, self.q_kernel[...].astype(dtype))
        k = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.k_kernel[...].astype(dtype))
        v = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.v_kernel[...].astype(dtype))
        q = q + self.q_bias[...].astype(dtype)
        k = k + self.k_bias[...].astype(dtype)
        v = v + self.v_bias[...].astype(dtype)
        return q, k, v

    def out(self, attn_BTNH: jax.Array) -> jax.Array:
        return jnp.einsum("BTNH,NHD->BTD", attn_BTNH, self.o_kernel[...].astype(attn_BTNH.dtype))


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        D, F = config.hidden_size, config.intermediate_size
        self.gate_kernel = _param(rngs, (D, F), ("embed", "mlp"), config, "normal")
        self.up_kernel = _param(rngs, (D, F), ("embed", "mlp"), config, "normal")
        self.down_kernel = _param(rngs, (F, D), ("mlp", "embed"), config, "normal")

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        dtype = x_BTD.dtype
        gate = _token_matmul(x_BTD, self.gate_kernel[...].astype(dtype))
        up = _token_matmul(x_BTD, self.up_kernel[...].astype(dtype))
        return _token_matmul(_gated(gate, up), self.down_kernel[...].astype(dtype))


@jax.checkpoint
def _gated(gate_BTF, up_BTF):
    """silu(gate) * up, recomputed in the backward from its two inputs: differentiated as is it
    kept five [B, T, F] residuals per layer (sigmoid, silu, ...) where two suffice
    (docs/benchmarks.md, "The training step's backward on the CPU")."""
    return jax.nn.silu(gate_BTF) * up_BTF


def _token_matmul(x_BTI: jax.Array, kernel_IO: jax.Array) -> jax.Array:
    """x [B, T, I] @ kernel [I, O] -> [B, T, O], as one [B * T, I] matrix: the weight gradient then
    contracts one token axis instead of two, which XLA:CPU ran as a slow transposing copy fused
    with the activation's backward (the tiny base's MLP forward + backward 3.8x faster;
    docs/benchmarks.md, "The training step's backward on the CPU")."""
    B, T, I = x_BTI.shape
    return (x_BTI.reshape(B * T, I) @ kernel_IO).reshape(B, T, kernel_IO.shape[1])
