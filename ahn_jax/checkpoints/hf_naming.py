"""How HF Qwen2 tensors map onto our state, both ways, and the check that a checkpoint fits.

HF linear weights are torch `[out, in]`; ours are `[in, ...out]` in the layout their einsums read
(`q_kernel` [D, N, H], `o_kernel` [N, H, D]). Layer weights are stacked on a leading layer axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from ahn_jax.config import ModelConfig

# Buffers some old checkpoints carry; transformers ignores them and so do we.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the config; the message lists every missing, unexpected and
    mis-shaped tensor."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor <-> one of our parameters (or one layer's slice of a stacked parameter).

    kind: "copy" (same layout), "bias" (reshape only), "linear" (transpose, then reshape); for
    "linear", `in_dims` is how many leading dims of our per-layer shape form the torch `in` axis.
    """

    hf_name: str
    path: tuple[str, ...]
    layer: int | None
    kind: str
    shape: tuple[int, ...]  # our per-layer shape
    in_dims: int = 1

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            n_in = math.prod(self.shape[: self.in_dims])
            return (math.prod(self.shape[self.in_dims :]), n_in)
        if self.kind == "bias":
            return (math.prod(self.shape),)
        return self.shape

    def to_ours(self, tensor: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return tensor.T.reshape(self.shape)
        return tensor.reshape(self.shape)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            n_in = math.prod(self.shape[: self.in_dims])
            return array.reshape(n_in, -1).T
        return array.reshape(self.hf_shape)


_LAYER_TENSORS = (
    # (HF suffix, our path under `layers`, kind, in_dims)
    ("input_layernorm.weight", ("input_norm", "scale"), "copy", 1),
    ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), "copy", 1),
    ("self_attn.q_proj.weight", ("attn", "q_kernel"), "linear", 1),
    ("self_attn.q_proj.bias", ("attn", "q_bias"), "bias", 1),
    ("self_attn.k_proj.weight", ("attn", "k_kernel"), "linear", 1),
    ("self_attn.k_proj.bias", ("attn", "k_bias"), "bias", 1),
    ("self_attn.v_proj.weight", ("attn", "v_kernel"), "linear", 1),
    ("self_attn.v_proj.bias", ("attn", "v_bias"), "bias", 1),
    ("self_attn.o_proj.weight", ("attn", "o_kernel"), "linear", 2),
    ("mlp.gate_proj.weight", ("mlp", "gate_kernel"), "linear", 1),
    ("mlp.up_proj.weight", ("mlp", "up_kernel"), "linear", 1),
    ("mlp.down_proj.weight", ("mlp", "down_kernel"), "linear", 1),
)


def tensor_maps(config: ModelConfig, param_shapes: Mapping[tuple[str, ...], tuple[int, ...]]):
    """Every HF tensor of the model, in HF's order, with where it goes in our state."""
    maps = [
        TensorMap(
            "model.embed_tokens.weight",
            ("embed_tokens",),
            None,
            "copy",
            param_shapes[("embed_tokens",)],
        )
    ]
    maps += layer_maps(config.num_layers, _LAYER_TENSORS, param_shapes)
    maps.append(
        TensorMap(
            "model.norm.weight",
            ("final_norm", "scale"),
            None,
            "copy",
            param_shapes[("final_norm", "scale")],
        )
    )
    if not config.tie_word_embeddings:
        maps.append(
            TensorMap("lm_head.weight", ("lm_head",), None, "linear", param_shapes[("lm_head",)])
        )
    return maps


def layer_maps(
    num_layers: int,
    table,
    param_shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    *,
    hf_prefix: str = "",
    path_prefix: tuple[str, ...] = (),
) -> list[TensorMap]:
    """A TensorMap per layer i and row (HF suffix, our sub-path, kind[, in_dims]) of `table`: HF
    tensor `model.layers.{i}.{hf_prefix}{suffix}`, our stacked `("layers", *path_prefix,
    *sub_path)`."""
    maps = []
    for i in range(num_layers):
        for suffix, sub_path, kind, *in_dims in table:
            path = ("layers", *path_prefix, *sub_path)
            name = f"model.layers.{i}.{hf_prefix}{suffix}"
            maps.append(TensorMap(name, path, i, kind, param_shapes[path][1:], *in_dims))
    return maps


def check_fits(
    maps: list[TensorMap], found_shapes: Mapping[str, tuple[int, ...]], *, tied: bool, source: str
) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped tensor."""
    expected = {m.hf_name: m.hf_shape for m in maps}
    missing = sorted(set(expected) - set(found_shapes))
    unexpected = sorted(
        name
        for name in set(found_shapes) - set(expected)
        if not name.endswith(IGNORED_SUFFIXES) and not (tied and name == "lm_head.weight")
    )
    misshaped = sorted(
        f"{name}: checkpoint {tuple(found_shapes[name])}, config expects {shape}"
        for name, shape in expected.items()
        if name in found_shapes and tuple(found_shapes[name]) != shape
    )
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {source} does not fit the model config:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointMismatchError("\n".join(lines))
