"""The Qwen2/Qwen2.5 decoder with AHN: three modes, scanned layers, remat, the `jax.jit` core.

`AhnModel(config, rngs)` is an NNX module; calling it runs a jitted pure function of its split
state (`forward`), so there is no Python graph walk per call. The decoder layers are created with
`nnx.vmap` (a leading `layers` axis on every weight) and applied with `jax.lax.scan`, so compile
time does not grow with depth.

Modes (docs/method.md §Method): "full" is causal attention (the teacher, and plain Qwen2); "swa"
restricts each query to S sinks + a window of W keys; "ahn" adds, before the frozen o_proj, the
output of the layer's AHN, which has absorbed every token that left the window. Inference goes
through `init_cache` / `prefill` / `decode_step`, whose cache (ahn_jax/model/cache.py) never grows
past S + W.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ahn_jax.config import MODES, ModelConfig
from ahn_jax.model import cached, inputs, layers, memory
from ahn_jax.model import prefill as prefill_lib
from ahn_jax.model.cache import DecodeCache, empty_cache
from ahn_jax.model.decoder import DecoderLayer
from ahn_jax.model.sharding import constrain
from kernels.window_attention import per_row

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class AhnModel(nnx.Module):
    """Qwen2/Qwen2.5 causal LM, with an AHN per layer when `config.ahn_type` is set.

    `model(input_ids, mode=...)` returns fp32 logits [B, T, V]; `init_cache` / `prefill` /
    `decode_step` run inference with a cache of constant size (ahn_jax/model/cache.py).
    """

    # what the config.json of the AHN weights loaded by from_pretrained records (W, S, how they
    # were trained: checkpoints.ahn_weights.AhnRecord), for save_ahn; None for fresh weights
    ahn_record = None

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, ahn_output_init: str = "zeros"):
        self.config = config
        V, D = config.vocab_size, config.hidden_size
        self.embed_tokens = nnx.Param(
            layers.INIT_STDDEV * jax.random.normal(rngs.params(), (V, D), config.jnp_param_dtype),
            logical_axes=("vocab", "embed"),
        )

        @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None, "logical_axes": "layers"})
        def make_layers(layer_rngs):
            return DecoderLayer(config, layer_rngs, ahn_output_init)

        self.layers = make_layers(rngs.split(config.num_layers))
        self.final_norm = layers.RMSNorm(D, config)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Param(
                layers.INIT_STDDEV
                * jax.random.normal(rngs.params(), (D, V), config.jnp_param_dtype),
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
        `sinks` are runtime values, each a scalar or one per row (int32 [B]: row b is computed as
        if alone with its own pair); new ones do not recompile."""
        input_ids = inputs.token_ids(input_ids, self.config.vocab_size, "input_ids", 2)
        if mode == "full":
            inputs.no_window(window, sinks)
        window, sinks = self._check_mode(mode, window, sinks, input_ids.shape[0])
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

    def _check_mode(self, mode, window, sinks, batch):
        """Window and sinks as int32 [B] (scalars broadcast), so that scalar and per-row calls
        share one compiled forward."""
        self._check_supported(mode)
        if mode == "full":
            return jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32)
        inputs.window_and_sinks(mode, window, sinks)
        return per_row(window, batch), per_row(sinks, batch, "sinks")

    def _check_stacked(self, what: str) -> None:
        if isinstance(self.layers, nnx.List):
            raise ValueError(
                f"{what} needs the model itself: this copy's layers are cut one module per "
                "layer for the cached path (unstack_layers / for_decoding)"
            )

    def _embed(self, input_ids_BT, positions_BT):
        config = self.config
        # the table gathered over its embed axis first (FSDP: a weight is gathered where it is
        # used): looked up while split there, the rows came out split on the axis the batch
        # needs, and XLA replicated the activations to move them ("involuntary full
        # rematerialization")
        table = constrain(self.embed_tokens[...], ("vocab", None))
        x = jnp.take(table, input_ids_BT, axis=0).astype(config.jnp_dtype)
        cos, sin = layers.model_rope_tables(positions_BT, config)
        return constrain(x, ("batch", "length", "embed")), cos, sin

    def _layer_windows(self, window_B, length):
        """Per-layer windows [L, B]: layers kept as full attention see the whole sequence."""
        full = jnp.zeros((self.config.num_layers,), bool)
        if self.config.full_attention_layers:
            full = full.at[jnp.asarray(self.config.full_attention_layers)].set(True)
        return jnp.where(full[:, None], jnp.maximum(length, 1), window_B[None, :])

    def logits(self, input_ids_BT, positions_BT, *, mode="full", window=None, sinks=0):
        """The traced computation behind `__call__` (call it inside jit/grad of your own)."""
        x, _ = self.hidden_states(input_ids_BT, positions_BT, mode=mode, window=window, sinks=sinks)
        return self._vocab_logits(x)

    def hidden_states(
        self, input_ids_BT, positions_BT, *, mode="full", window=None, sinks=0, collect=False
    ):
        """Final-normed hidden states [B, T, D] (the input of `lm_head_DV`), and with `collect`
        every layer's attention output before o_proj, stacked [L, B, T, N, H] (else None).
        `window` and `sinks`: scalars or int32 [B], one per row."""
        self._check_supported(mode)
        self._check_stacked("the parallel forward")
        inputs.window_and_sinks(mode, window, sinks)
        x, cos, sin = self._embed(input_ids_BT, positions_BT)
        B, T = input_ids_BT.shape
        windows = self._layer_windows(per_row(0 if window is None else window, B), T)
        sinks = per_row(sinks, B, "sinks")

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

    def save_ahn(self, directory, *, window: int | None = None, sinks: int | None = None):
        """Write the AHN weights as the released AHN-only checkpoints are laid out
        (`model.safetensors` + `config.json`, read by `from_pretrained(base, ahn_path=...)` and the
        reference's merge script); `window` and `sinks` are the inference W and S the config
        records: given, else those recorded with the AHN weights the model was loaded with
        (`ahn_record`, with how they were trained), else 32640 and 128. Returns the directory."""
        self._check_stacked("save_ahn")
        # the one upward import of the model package (tests/test_architecture.py): the release
        # layout is a checkpoint format, which lives with the other formats
        from ahn_jax.checkpoints import ahn_weights

        return ahn_weights.save_model_ahn(self, directory, window=window, sinks=sinks)

    # ---- inference with a constant-size cache ------------------------------------------------

    def init_cache(
        self,
        batch_size: int,
        *,
        window: int,
        sinks: int = 0,
        mode: str | None = None,
        decode: str = "exact",
        max_length: int | None = None,
    ):
        """An empty cache of S + W + 1 slots per layer. `mode` defaults to "ahn" when the model
        has AHN weights, else "swa"; mode "full" is plain attention over up to `window` tokens
        (more is an error) and takes no sinks. `decode="reference"` reproduces the reference's
        decode bookkeeping (docs/evaluation.md); layers kept as full attention hold `max_length`
        (prompt + new tokens) positions."""
        config = self.config
        mode = mode or ("ahn" if config.ahn_type else "swa")
        self._check_supported(mode)  # window and sinks are checked by empty_cache
        return empty_cache(
            num_layers=config.num_layers,
            batch_size=batch_size,
            window=window,
            sinks=sinks,
            num_kv_heads=config.num_kv_heads,
            num_heads=config.num_heads,
            head_dim=config.head_dim,
            gate_names=memory.gate_names(config.ahn_type) if config.ahn_type else (),
            dtype=config.jnp_dtype,
            mode=mode,
            decode=decode,
            # mode "full" attends everything everywhere: no layer needs a group of its own
            full_layers=config.full_attention_layers if mode != "full" else (),
            max_length=max_length,
        )

    def prefill(
        self,
        input_ids: jax.Array,
        cache: DecodeCache,
        *,
        lengths=None,
        chunk_size: int = 1024,
        all_logits: bool = False,
        on_chunk: Callable[[int, int], None] | None = None,
        donate: bool = False,
    ):
        """Feed prompts [B, P] (any P >= 1) into the cache, `chunk_size` tokens at a time.

        `lengths` [B] (default: all P) makes a ragged batch: row b's prompt is its first
        lengths[b] ids (right-padded), and it continues from its own length. Returns (logits,
        cache): each row's logits at its last prompt token [B, V], or every position's [B, P, V]
        with `all_logits` (padding included). Calls may follow each other (and decode steps).
        `on_chunk(done, total)`, for progress bars, is called once each chunk has been computed,
        with the positions fed so far and the longest prompt's length. `donate=True` hands the
        cache to XLA to update in place (the one passed in is spent: use the returned one), as
        `decode_step`'s; the chunks after the first update the cache in place either way. Not for
        use inside jit: it checks its arguments and chunks on the host (jit `extend_cache`
        instead)."""
        input_ids = inputs.token_ids(input_ids, self.config.vocab_size, "input_ids", 2)
        B, P = input_ids.shape
        if B != cache.batch_size:
            raise ValueError(f"input_ids has batch {B}, the cache {cache.batch_size}")
        lengths = inputs.lengths(lengths, B, P)
        chunk_size = inputs.count(chunk_size, "chunk_size", 1)
        inputs.room(cache, lengths)
        graphdef, state = nnx.split(self)

        def extend(ids, part, new, all_logits=False, *, in_place):
            step = extend_cache_in_place if in_place else extend_cache
            return step(graphdef, state, ids, part, new, all_logits)

        return prefill_lib.in_chunks(
            extend, input_ids, cache, lengths, chunk_size, all_logits=all_logits,
            on_chunk=on_chunk, donate=donate,
        )  # fmt: skip

    def decode_step(self, token_ids: jax.Array, cache: DecodeCache, *, donate: bool = False):
        """One token per row, each at its own next position: token_ids [B] -> (logits [B, V],
        cache). `donate=True` hands the cache to XLA to update in place (the one passed in is
        spent: use the returned one), where otherwise every step copies it, as a decode loop
        `logits, cache = model.decode_step(token, cache, donate=True)` wants. A cache that can
        overrun (mode "full", full-attention layers) is checked each step, which waits for the
        previous step; `generate` sizes its cache itself and skips that."""
        # ids already on the device (a previous step's argmax) are not read back to check them
        host = not isinstance(token_ids, jax.Array)
        vocab = self.config.vocab_size
        token_ids = inputs.token_ids(token_ids, vocab, "token_ids", 1, values=host)
        if token_ids.shape[0] != cache.batch_size:
            raise ValueError(
                f"token_ids has {token_ids.shape[0]} rows, the cache {cache.batch_size}"
            )
        inputs.room(cache, 1)
        graphdef, state = nnx.split(self)
        step = _donating_decode_step if donate else decode_step
        return step(graphdef, state, token_ids, cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode"))
def forward(graphdef, state, input_ids_BT, positions_BT, window, sinks, *, mode="full"):
    """Pure function of the split model state: fp32 logits [B, T, V]."""
    model = nnx.merge(graphdef, state)
    return model.logits(input_ids_BT, positions_BT, mode=mode, window=window, sinks=sinks)


def _extend(graphdef, state, input_ids_BP, cache, new_B, all_logits=False, decoding=False):
    """Pure prefill of P tokens per row, the first new_B[b] of row b real: (logits, new cache)."""
    model = nnx.merge(graphdef, state)
    return cached.cached_logits(
        model, input_ids_BP, cache, new_B, all_logits=all_logits, decoding=decoding
    )


_EXTEND_STATIC = ("graphdef", "all_logits", "decoding")
extend_cache = jax.jit(_extend, static_argnames=_EXTEND_STATIC)
# prefill's chunks: the cache donated, so XLA writes the new slots where it lies; without it every
# chunk held two whole caches (Qwen2.5-3B on one v5e chip, W = 32,640, 2 rows: peak 13.2 -> 10.5
# GB, docs/benchmarks.md)
extend_cache_in_place = jax.jit(_extend, static_argnames=_EXTEND_STATIC, donate_argnames="cache")


def decode_step(graphdef, state, token_ids_B, cache):
    """Pure decode step, usable inside jit and lax.scan: (logits [B, V], new cache)."""
    new_B = jnp.ones(token_ids_B.shape, jnp.int32)
    return extend_cache(graphdef, state, token_ids_B[:, None], cache, new_B, decoding=True)


_donating_decode_step = jax.jit(decode_step, static_argnames="graphdef", donate_argnames="cache")


def init_model(config: ModelConfig, seed: int = 0, ahn_output_init: str = "zeros") -> AhnModel:
    return AhnModel(config, nnx.Rngs(params=seed), ahn_output_init)


def abstract_model(config: ModelConfig) -> AhnModel:
    """The model with ShapeDtypeStruct leaves: shapes and metadata, nothing allocated."""
    return nnx.eval_shape(lambda: init_model(config))
