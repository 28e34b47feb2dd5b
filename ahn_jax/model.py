"""The Qwen2/Qwen2.5 decoder with AHN: three modes, scanned layers, remat, the `jax.jit` core.

`Qwen2Model(config, rngs)` is an NNX module; calling it runs a jitted pure function of its split
state (`forward`), so there is no Python graph walk per call. The decoder layers are created with
`nnx.vmap` (a leading `layers` axis on every weight) and applied with `jax.lax.scan`, so compile
time does not grow with depth.

Modes (ahn_spec §1.2): "full" is causal attention (the teacher, and plain Qwen2); "swa" restricts
each query to S sinks + a window of W keys; "ahn" adds, before the frozen o_proj, the output of the
layer's AHN, which has absorbed every token that left the window. Inference goes through
`init_cache` / `prefill` / `decode_step`, whose cache (ahn_jax/cache.py) never grows past S + W.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ahn_jax import ahn, attention, qwen
from ahn_jax.cache import DecodeCache, empty_cache, extend_plan
from ahn_jax.config import ModelConfig
from ahn_jax.sharding import constrain
from kernels import window_attention

MODES = ("full", "swa", "ahn")

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _masked_where(keep, x):
    """x where `keep` ([T] over the sequence axis 1), else 0."""
    return jnp.where(keep.reshape((1, -1) + (1,) * (x.ndim - 2)), x, 0)


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, ahn_output_init: str = "zeros"):
        self.input_norm = qwen.RMSNorm(config.hidden_size, config)
        self.attn = qwen.AttentionProjections(config, rngs)
        self.post_attn_norm = qwen.RMSNorm(config.hidden_size, config)
        self.mlp = qwen.SwiGLU(config, rngs)
        if config.ahn_type is not None:
            self.ahn = ahn.make_memory(config, rngs, ahn_output_init)

    def _project(self, x_BTD, cos_BTH, sin_BTH):
        h = self.input_norm(x_BTD)
        q, k, v = self.attn.qkv(h)
        return h, qwen.apply_rope(q, cos_BTH, sin_BTH), qwen.apply_rope(k, cos_BTH, sin_BTH), v

    def _finish(self, x_BTD, attn_BTNH):
        x_BTD = x_BTD + self.attn.out(attn_BTNH)
        return x_BTD + self.mlp(self.post_attn_norm(x_BTD))

    def __call__(
        self, x_BTD, cos_BTH, sin_BTH, *, mode="full", window=None, sinks=0, with_attention=False
    ):
        """The parallel forward; `with_attention` also returns the pre-o_proj attention output
        (AHN output included), which the per-layer `distill` loss compares."""
        h, q, k, v = self._project(x_BTD, cos_BTH, sin_BTH)
        if mode == "full":
            attn = attention.causal_attention(q, k, v)
        else:
            attn = attention.causal_attention(q, k, v, window=window, sinks=sinks)
        if mode == "ahn":
            attn = attn + self.memory(h, q, k, v, window, sinks)
        out = self._finish(x_BTD, attn)
        return (out, attn) if with_attention else out

    def memory(self, h_BTD, q_BTNH, k_BTKH, v_BTKH, window, sinks):
        """The AHN output [B, T, N, H] of the parallel forward. The memory runs over all T
        positions, item t holding the token t - W that leaves the window as t arrives; items
        with nothing to evict (t < S + W) get identity gates, so shapes never depend on W, S."""
        t = jnp.arange(q_BTNH.shape[1])
        y, _ = self._read_memory(
            h_BTD,
            q_BTNH,
            (k_BTKH, v_BTKH, self.ahn.write_gates(h_BTD)),
            evict_index=jnp.maximum(t - window, 0),
            evicting=t - window >= sinks,
            state=None,
            impl="chunked",
        )
        return y

    def _read_memory(self, h_BTD, q_BTNH, sources, evict_index, evicting, state, impl):
        """Write the evicted items (k, v and gates gathered from `sources` at `evict_index`,
        identity gates where not `evicting`) and read with the current queries: the one memory
        path of the parallel forward and of prefill/decode. Returns (y, final state)."""
        k, v, gates = sources
        gates = {
            n: _masked_where(evicting, jnp.take(g, evict_index, axis=1)) for n, g in gates.items()
        }
        k_ev, v_ev = (
            ahn.repeat_kv(jnp.take(x, evict_index, axis=1), q_BTNH.shape[2]).astype(q_BTNH.dtype)
            for x in (k, v)
        )
        o, state = self.ahn.recurrence(q_BTNH, k_ev, v_ev, gates, state, impl)
        return _masked_where(evicting, self.ahn.output(o, h_BTD)), state

    def extend(self, x_BTD, cos_BTH, sin_BTH, arrays: dict, plan, mode: str):
        """P new tokens against this layer's cache arrays (ahn_jax/cache.py); returns the new
        hidden states and arrays."""
        h, q, k, v = self._project(x_BTD, cos_BTH, sin_BTH)
        k_all = jnp.concatenate([arrays["k"], k.astype(arrays["k"].dtype)], axis=1)
        v_all = jnp.concatenate([arrays["v"], v.astype(arrays["v"].dtype)], axis=1)
        attn = window_attention.masked_attention(
            q, k_all.astype(q.dtype), v_all.astype(q.dtype), plan.mask
        )
        kept = {
            "k": jnp.take(k_all, plan.keep_index, axis=1),
            "v": jnp.take(v_all, plan.keep_index, axis=1),
            "gates": arrays["gates"],
            "state": arrays["state"],
        }
        if mode == "ahn":
            new_gates = self.ahn.write_gates(h)
            gates_all = {
                n: jnp.concatenate([arrays["gates"][n], new_gates[n]], 1) for n in new_gates
            }
            kept["gates"] = {n: jnp.take(g, plan.keep_index, axis=1) for n, g in gates_all.items()}
            y, kept["state"] = self._read_memory(
                h,
                q,
                (k_all, v_all, gates_all),
                evict_index=plan.evict_index,
                evicting=plan.evicting,
                state=arrays["state"],
                impl=ahn.recurrence_impl(q.shape[1]),
            )
            attn = attn + y
        return self._finish(x_BTD, attn), kept


class Qwen2Model(nnx.Module):
    """Qwen2/Qwen2.5 causal LM, with an AHN per layer when `config.ahn_type` is set.

    `model(input_ids, mode=...)` returns fp32 logits [B, T, V]; `init_cache` / `prefill` /
    `decode_step` run inference with a cache of constant size (ahn_jax/cache.py).
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, ahn_output_init: str = "zeros"):
        self.config = config
        V, D = config.vocab_size, config.hidden_size
        self.embed_tokens = nnx.Param(
            qwen.INIT_STDDEV * jax.random.normal(rngs.params(), (V, D), config.jnp_param_dtype),
            logical_axes=("vocab", "embed"),
        )

        @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None, "logical_axes": "layers"})
        def make_layers(layer_rngs):
            return DecoderLayer(config, layer_rngs, ahn_output_init)

        self.layers = make_layers(rngs.split(config.num_layers))
        self.final_norm = qwen.RMSNorm(D, config)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Param(
                qwen.INIT_STDDEV * jax.random.normal(rngs.params(), (D, V), config.jnp_param_dtype),
                logical_axes=("embed", "vocab"),
            )

    # ---- parallel forward -------------------------------------------------------------------

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        mode: str = "full",
        window=None,
        sinks=0,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, T, V] in fp32. Modes: "full" (causal attention, the teacher), "swa" (S sinks
        + a window of W keys) and "ahn" (swa plus the memory of evicted tokens). `window` and
        `sinks` are runtime values: new ones do not recompile."""
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        window, sinks = self._check_mode(mode, window, sinks)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        elif jnp.shape(positions) != input_ids.shape:
            raise ValueError(
                f"positions must have the shape of input_ids {input_ids.shape}, "
                f"got {jnp.shape(positions)}"
            )
        graphdef, state = nnx.split(self)
        return forward(graphdef, state, input_ids, jnp.asarray(positions), window, sinks, mode=mode)

    def _check_supported(self, mode):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "ahn" and self.config.ahn_type is None:
            raise ValueError(
                "mode 'ahn' needs AHN weights: load with from_pretrained(..., ahn_type=...) or "
                "ahn_path=..., or set ahn.type in the config"
            )

    def _check_mode(self, mode, window, sinks):
        self._check_supported(mode)
        if mode == "full":
            return jnp.int32(0), jnp.int32(0)
        if window is None:
            raise ValueError(f"mode {mode!r} needs window=W (the sliding window, sinks excluded)")
        for name, value, low in (("window", window, 1), ("sinks", sinks, 0)):
            if not isinstance(value, jax.core.Tracer) and int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {int(value)}")
        return jnp.asarray(window, jnp.int32), jnp.asarray(sinks, jnp.int32)

    def _embed(self, input_ids_BT, positions_BT):
        config = self.config
        x = jnp.take(self.embed_tokens[...], input_ids_BT, axis=0).astype(config.jnp_dtype)
        cos, sin = qwen.rope_tables(positions_BT, config.head_dim, config.rope_theta)
        return constrain(x, ("batch", "length", "embed")), cos, sin

    def _layer_windows(self, window, length):
        """Per-layer windows: layers kept as full attention see the whole sequence."""
        full = jnp.zeros((self.config.num_layers,), bool)
        if self.config.full_attention_layers:
            full = full.at[jnp.asarray(self.config.full_attention_layers)].set(True)
        return jnp.where(full, jnp.maximum(length, 1), window)

    def logits(self, input_ids_BT, positions_BT, *, mode="full", window=None, sinks=0):
        """The traced computation behind `__call__` (call it inside jit/grad of your own)."""
        x, _ = self.hidden_states(input_ids_BT, positions_BT, mode=mode, window=window, sinks=sinks)
        return self._vocab_logits(x)

    def hidden_states(
        self, input_ids_BT, positions_BT, *, mode="full", window=None, sinks=0, collect=False
    ):
        """Final-normed hidden states [B, T, D] (the input of `lm_head_DV`), and with `collect`
        every layer's attention output before o_proj, stacked [L, B, T, N, H] (else None)."""
        x, cos, sin = self._embed(input_ids_BT, positions_BT)
        windows = self._layer_windows(window if window is not None else 0, x.shape[1])

        def layer_step(x_BTD, inputs):
            layer, layer_window = inputs
            x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
            x_BTD, attn = layer(
                x_BTD, cos, sin, mode=mode, window=layer_window, sinks=sinks, with_attention=True
            )
            return constrain(x_BTD, ("batch", "length", "embed")), attn if collect else None

        if self.config.remat_policy != "none":
            policy = _REMAT_POLICIES[self.config.remat_policy]
            layer_step = jax.checkpoint(layer_step, policy=policy)
        x, attentions = jax.lax.scan(layer_step, x, (self.layers, windows))
        return self.final_norm(x), attentions

    def lm_head_DV(self) -> jax.Array:
        """The output projection [D, V] in the compute dtype (the embedding when tied)."""
        head = self.embed_tokens[...].T if self.config.tie_word_embeddings else self.lm_head[...]
        return head.astype(self.config.jnp_dtype)

    def _vocab_logits(self, normed_x):
        return jnp.einsum(
            "...D,DV->...V", normed_x, self.lm_head_DV(), preferred_element_type=jnp.float32
        )

    # ---- inference with a constant-size cache ------------------------------------------------

    def init_cache(self, batch_size: int, *, window: int, sinks: int = 0, mode: str | None = None):
        """An empty cache of S + W slots per layer. `mode` defaults to "ahn" when the model has
        AHN weights, else "swa"; mode "full" is plain attention over up to `window` tokens."""
        config = self.config
        mode = mode or ("ahn" if config.ahn_type else "swa")
        self._check_supported(mode)  # window and sinks are checked by empty_cache
        if config.full_attention_layers and mode != "full":
            raise NotImplementedError(
                "ahn.full_attention_layers is not supported by the constant-size cache (those "
                "layers' caches grow with the context); use the parallel forward"
            )
        return empty_cache(
            num_layers=config.num_layers,
            batch_size=batch_size,
            window=window,
            sinks=sinks,
            num_kv_heads=config.num_kv_heads,
            num_heads=config.num_heads,
            head_dim=config.head_dim,
            gate_names=ahn.gate_names(config.ahn_type) if config.ahn_type else (),
            dtype=config.jnp_dtype,
            mode=mode,
        )

    def prefill(
        self,
        input_ids: jax.Array,
        cache: DecodeCache,
        *,
        chunk_size: int = 1024,
        all_logits: bool = False,
    ):
        """Feed a prompt [B, P] (any P >= 1) into the cache, `chunk_size` tokens at a time.

        Returns (logits, cache): the last position's logits [B, V], or [B, P, V] with
        `all_logits`. Calls may follow each other (and decode steps): the state carries over."""
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must be [batch, length >= 1], got {input_ids.shape}")
        if input_ids.shape[0] != cache.k.shape[1]:
            raise ValueError(
                f"input_ids has batch {input_ids.shape[0]}, the cache {cache.k.shape[1]}"
            )
        graphdef, state = nnx.split(self)
        pieces = []
        for start in range(0, input_ids.shape[1], chunk_size):
            logits, cache = extend(
                graphdef, state, input_ids[:, start : start + chunk_size], cache, all_logits
            )
            pieces.append(logits)
        return (jnp.concatenate(pieces, axis=1) if all_logits else pieces[-1]), cache

    def decode_step(self, token_ids: jax.Array, cache: DecodeCache):
        """One token per row: token_ids [B] -> (logits [B, V], cache)."""
        graphdef, state = nnx.split(self)
        return decode_step(graphdef, state, token_ids, cache)

    def extend_logits(self, input_ids_BP, cache: DecodeCache, all_logits: bool):
        """The traced computation behind prefill/decode: P new tokens against the cache."""
        plan = extend_plan(cache, input_ids_BP.shape[1])
        positions = jnp.broadcast_to(plan.positions, input_ids_BP.shape)
        x, cos, sin = self._embed(input_ids_BP, positions)

        def layer_step(x_BTD, inputs):
            layer, arrays = inputs
            return layer.extend(x_BTD, cos, sin, arrays, plan, cache.mode)

        x, arrays = jax.lax.scan(layer_step, x, (self.layers, cache.layer_arrays()))
        logits = self._vocab_logits(self.final_norm(x if all_logits else x[:, -1]))
        new_cache = cache.replace(
            **arrays, slot_pos=plan.slot_pos, length=cache.length + input_ids_BP.shape[1]
        )
        return logits, new_cache


@functools.partial(jax.jit, static_argnames=("graphdef", "mode"))
def forward(graphdef, state, input_ids_BT, positions_BT, window, sinks, *, mode="full"):
    """Pure function of the split model state: fp32 logits [B, T, V]."""
    model = nnx.merge(graphdef, state)
    return model.logits(input_ids_BT, positions_BT, mode=mode, window=window, sinks=sinks)


@functools.partial(jax.jit, static_argnames=("graphdef", "all_logits"))
def extend(graphdef, state, input_ids_BP, cache, all_logits=False):
    """Pure prefill of P tokens: (logits, new cache)."""
    return nnx.merge(graphdef, state).extend_logits(input_ids_BP, cache, all_logits)


def decode_step(graphdef, state, token_ids_B, cache):
    """Pure decode step, usable inside jit and lax.scan: (logits [B, V], new cache)."""
    return extend(graphdef, state, token_ids_B[:, None], cache)


def init_model(config: ModelConfig, seed: int = 0, ahn_output_init: str = "zeros") -> Qwen2Model:
    return Qwen2Model(config, nnx.Rngs(params=seed), ahn_output_init)


def abstract_model(config: ModelConfig) -> Qwen2Model:
    """The model with ShapeDtypeStruct leaves: shapes and metadata, nothing allocated."""
    return nnx.eval_shape(lambda: init_model(config))
