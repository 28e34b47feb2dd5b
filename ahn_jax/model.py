"""The Qwen2/Qwen2.5 decoder: scanned layers, remat, and the functional `jax.jit` core.

`Qwen2Model(config, rngs)` is an NNX module; calling it runs a jitted pure function of its split
state (`forward`), so there is no Python graph walk per call. The decoder layers are created with
`nnx.vmap` (a leading `layers` axis on every weight) and applied with `jax.lax.scan`, so compile
time does not grow with depth.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ahn_jax import attention, qwen
from ahn_jax.config import ModelConfig
from ahn_jax.sharding import constrain

MODES = ("full",)

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.input_norm = qwen.RMSNorm(config.hidden_size, config)
        self.attn = qwen.AttentionProjections(config, rngs)
        self.post_attn_norm = qwen.RMSNorm(config.hidden_size, config)
        self.mlp = qwen.SwiGLU(config, rngs)

    def __call__(self, x_BTD, cos_BTH, sin_BTH):
        h = self.input_norm(x_BTD)
        q, k, v = self.attn.qkv(h)
        q = qwen.apply_rope(q, cos_BTH, sin_BTH)
        k = qwen.apply_rope(k, cos_BTH, sin_BTH)
        x_BTD = x_BTD + self.attn.out(attention.causal_attention(q, k, v))
        return x_BTD + self.mlp(self.post_attn_norm(x_BTD))


class Qwen2Model(nnx.Module):
    """Qwen2/Qwen2.5 causal LM. `model(input_ids)` returns fp32 logits [B, T, V]."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        V, D = config.vocab_size, config.hidden_size
        self.embed_tokens = nnx.Param(
            qwen.INIT_STDDEV * jax.random.normal(rngs.params(), (V, D), config.jnp_param_dtype),
            logical_axes=("vocab", "embed"),
        )

        @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None, "logical_axes": "layers"})
        def make_layers(layer_rngs):
            return DecoderLayer(config, layer_rngs)

        self.layers = make_layers(rngs.split(config.num_layers))
        self.final_norm = qwen.RMSNorm(D, config)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Param(
                qwen.INIT_STDDEV * jax.random.normal(rngs.params(), (D, V), config.jnp_param_dtype),
                logical_axes=("embed", "vocab"),
            )

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        mode: str = "full",
        positions: jax.Array | None = None,
    ) -> jax.Array:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        elif jnp.shape(positions) != input_ids.shape:
            raise ValueError(
                f"positions must have the shape of input_ids {input_ids.shape}, "
                f"got {jnp.shape(positions)}"
            )
        graphdef, state = nnx.split(self)
        return forward(graphdef, state, input_ids, jnp.asarray(positions))

    def logits(self, input_ids_BT, positions_BT) -> jax.Array:
        """The traced computation behind `__call__` (call it inside jit/grad of your own)."""
        config = self.config
        dtype = config.jnp_dtype
        x = jnp.take(self.embed_tokens[...], input_ids_BT, axis=0).astype(dtype)
        x = constrain(x, ("batch", "length", "embed"))
        cos, sin = qwen.rope_tables(positions_BT, config.head_dim, config.rope_theta)

        def layer_step(x_BTD, layer):
            x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
            x_BTD = layer(x_BTD, cos, sin)
            return constrain(x_BTD, ("batch", "length", "embed")), None

        if config.remat_policy != "none":
            layer_step = jax.checkpoint(layer_step, policy=_REMAT_POLICIES[config.remat_policy])
        x, _ = jax.lax.scan(layer_step, x, self.layers)
        x = self.final_norm(x)
        if config.tie_word_embeddings:
            logits = jnp.einsum(
                "BTD,VD->BTV",
                x,
                self.embed_tokens[...].astype(dtype),
                preferred_element_type=jnp.float32,
            )
        else:
            logits = jnp.einsum(
                "BTD,DV->BTV",
                x,
                self.lm_head[...].astype(dtype),
                preferred_element_type=jnp.float32,
            )
        return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def forward(graphdef, state, input_ids_BT, positions_BT) -> jax.Array:
    """Pure function of the split model state: fp32 logits [B, T, V]."""
    model = nnx.merge(graphdef, state)
    return model.logits(input_ids_BT, positions_BT)


def init_model(config: ModelConfig, seed: int = 0) -> Qwen2Model:
    return Qwen2Model(config, nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> Qwen2Model:
    """The model with ShapeDtypeStruct leaves: shapes and metadata, nothing allocated."""
    return nnx.eval_shape(lambda: init_model(config))
