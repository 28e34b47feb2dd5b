"""AHN-only weights in the reference's layout: `model.safetensors` + `config.json`.

This is how the released checkpoints (ByteDance-Seed/AHN-{GDN,DN,Mamba2}-for-Qwen-2.5-Instruct-*)
are stored: tensors `model.layers.{i}.ahn.fn.<name>` in torch layout, and the base model's
config.json with the reference's AHN fields (`_ahn_implementation`, `fa_layer_ids`, ...); ours
rebuild that config from the model's (shape, RoPE, dtype: no bos/eos/pad ids, which the
reference's merge would then lack in config.json, though its generation_config.json keeps them).
They run on top of the base model they were trained for (docs/method.md §Variants). The same
tensors and fields inside a base checkpoint make the merged layout (ahn_jax/checkpoints/layouts.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from ahn_jax.checkpoints import safetensors_io, staging
from ahn_jax.checkpoints.converted import ParamPath
from ahn_jax.checkpoints.hf_config import read_hf_config, to_hf_config
from ahn_jax.checkpoints.hf_naming import TensorMap, check_fits, layer_maps
from ahn_jax.config import AHN_TYPES, ConfigError, ModelConfig
from ahn_jax.config.run import WINDOW_SAMPLINGS

IMPLEMENTATIONS = {"gdn": "GatedDeltaNet", "dn": "DeltaNet", "mamba2": "Mamba2"}
# The inference W and S an export records when none is given: the evaluation defaults of
# docs/method.md §Inference (LV-Eval, InfiniteBench; W + S = 32,768).
DEFAULT_WINDOW, DEFAULT_SINKS = 32640, 128
# What an AHN-only or merged config.json holds beyond the base's: the fields of the reference's
# Qwen2Config subclass (src/ahn/transformer/qwen2_ahn/qwen2_ahn.py), its `save_ahn_only` flag and
# the W (`sliding_window`) and S (`num_attn_sinks`) its inference reads.
AHN_CONFIG_KEYS = (
    "_layer_implementation",
    "_ahn_implementation",
    "sliding_window",
    "num_attn_sinks",
    "sliding_window_type",
    "ahn_position",
    "fa_layer_ids",
    "loss_type",
    "save_ahn_only",
    "use_ahn_router",
    "use_q_proj",
    "use_normalized_l2",
    "use_layerwise_decay",
)
_AHN_TENSOR = re.compile(r"model\.layers\.\d+\.ahn\.")
# A tensor every base checkpoint holds (tied or not) and an AHN-only one never does: what tells a
# merged directory from an AHN-only one, whose released configs may not set `save_ahn_only`.
BASE_TENSOR = "model.embed_tokens.weight"


def is_ahn_tensor(name: str) -> bool:
    """Whether an HF tensor name is an AHN weight (`model.layers.{i}.ahn.*`)."""
    return _AHN_TENSOR.match(name) is not None


def hf_layout(directory: str | Path) -> str:
    """Which HF layout a directory holds (ahn_jax/checkpoints/layouts.py): "base" (its config.json
    names no `_ahn_implementation`), "merged" (an AHN config beside the base's tensors) or
    "ahn_only" (an AHN config and no base tensor). Reads config.json and the tensors' headers."""
    if read_hf_config(directory).get("_ahn_implementation") is None:
        return "base"
    return "merged" if BASE_TENSOR in safetensors_io.tensor_index(directory) else "ahn_only"


def is_ahn_param(path: ParamPath) -> bool:
    """Whether one of our parameter paths is an AHN weight (stacked under `layers.ahn`)."""
    return path[:2] == ("layers", "ahn")


def base_hf_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The base model's config.json (of an AHN-only, merged or base one): without the AHN fields,
    and with `sliding_window` null. The base runs full attention, but transformers 4 (4.51, the
    reference's, included) masks Qwen2's eager and sdpa attention to `sliding_window` whenever
    the key is set, whatever `use_sliding_window` says, and takes a missing key as 4096; null is
    the one value every reader takes as no window (tests/test_checkpoints/test_transformers4.py).
    Beside the AHN fields `sliding_window` is AHN's W; in a base config Qwen2.5 ships 32768 or
    131072, a window that only transformers 4 applies."""
    base = {key: value for key, value in hf.items() if key not in AHN_CONFIG_KEYS}
    return {**base, "sliding_window": None}


# (reference name under `ahn.fn.`, our name under `layers.ahn`, kind): kinds as hf_naming's
_TENSORS = {
    "gdn": (
        ("a_proj.weight", "a_proj", "linear"),
        ("b_proj.weight", "b_proj", "linear"),
        ("g_proj.weight", "g_proj", "linear"),
        ("A_log", "A_log", "copy"),
        ("dt_bias", "dt_bias", "copy"),
        ("D", "D", "copy"),
        ("o_norm.weight", "o_norm", "copy"),
        ("o_proj.weight", "o_proj", "copy"),
    ),
    "dn": (
        ("b_proj.weight", "b_proj", "linear"),
        ("g_proj.weight", "g_proj", "linear"),
        ("o_norm.weight", "o_norm", "copy"),
        ("o_proj.weight", "o_proj", "copy"),
    ),
    "mamba2": (
        ("dt_proj.weight", "dt_proj", "linear"),
        ("dt_proj.bias", "dt_proj_bias", "copy"),
        ("g_proj.weight", "g_proj", "linear"),
        ("g_proj.bias", "g_proj_bias", "copy"),
        ("dt_bias", "dt_bias", "copy"),
        ("A_log", "A_log", "copy"),
        ("norm.weight", "norm", "bias"),  # the reference's [N * H] is our [N, H]
        ("o_proj.weight", "o_proj", "copy"),
    ),
}


def ahn_tensor_maps(
    config: ModelConfig, param_shapes: Mapping[ParamPath, tuple[int, ...]]
) -> list[TensorMap]:
    """The reference name of each of our AHN parameters in `param_shapes` (stacked shapes), per
    layer. An AHN parameter the type's table does not name is refused, not left out: it would
    be missing from a saved checkpoint, and unfilled in a loaded model."""
    table = [(ref_name, (ours,), kind) for ref_name, ours, kind in _TENSORS[config.ahn_type]]
    maps = layer_maps(
        config.num_layers, table, param_shapes, hf_prefix="ahn.fn.", path_prefix=("ahn",)
    )
    unnamed = {p for p in param_shapes if is_ahn_param(p)} - {m.path for m in maps}
    if unnamed:
        raise ConfigError(
            f"AHN weights {sorted('.'.join(p) for p in unnamed)} of ahn.type "
            f"{config.ahn_type!r} have no reference name: add them to _TENSORS in "
            "ahn_jax/checkpoints/ahn_weights.py"
        )
    return maps


def ahn_hf_config(
    config: ModelConfig,
    *,
    window: int,
    sinks: int,
    loss: str = "kl",
    window_sampling: str = "fixed",
) -> dict[str, Any]:
    """The base model's config.json plus the reference's AHN fields, as its Qwen2Config subclass
    names them: W = `window` and S = `sinks` for inference, `loss` the training loss and
    `window_sampling` how training drew its windows."""
    if not (isinstance(window, int) and window > 0 and isinstance(sinks, int) and sinks >= 0):
        raise ConfigError(f"window must be an int > 0 and sinks an int >= 0, got {window}, {sinks}")
    if window_sampling not in WINDOW_SAMPLINGS:
        raise ConfigError(f"window_sampling must be one of {WINDOW_SAMPLINGS}: {window_sampling!r}")
    hf = to_hf_config(config)  # use_sliding_window false: transformers 5 ignores W below
    hf.update(
        _layer_implementation="Qwen2MemDecoderLayer",
        _ahn_implementation=IMPLEMENTATIONS[config.ahn_type],
        # the reference's inference (eval mode) reads exactly these two, num_attn_sinks default 0
        # (qwen2_ahn.py's pre_model_forward and Qwen2MemDecoderLayer); W without the sinks
        sliding_window=window,
        num_attn_sinks=sinks,
        # training-mode settings, inert at inference, read as the record of how the weights
        # were trained: "fixed" trains on `sliding_window` as given, "random" draws W + S per
        # sequence; ahn_position "prefix" means no sinks, "random" draws S (as our random
        # sampling does), so "prefix" exactly when a fixed S is 0 keeps it from contradicting S
        sliding_window_type=window_sampling,
        ahn_position="prefix" if sinks == 0 and window_sampling != "random" else "random",
        fa_layer_ids=",".join(str(i) for i in config.full_attention_layers),
        loss_type=loss.split("+"),
        save_ahn_only=True,  # merge_weights.py sets it false in the merged config
        use_ahn_router=False,
        use_q_proj=False,
        use_normalized_l2=True,  # the reference's defaults (training-only: the distill loss)
        use_layerwise_decay=True,
    )
    return hf


def _optional_int(hf: Mapping[str, Any], key: str, path: Path, minimum: int) -> int | None:
    value = hf.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{path}: {key!r} = {value!r} is not an int")
    if value is not None and value < minimum:
        raise ConfigError(f"{path}: {key!r} = {value} must be >= {minimum}")
    return value


def _window_sampling(hf: Mapping[str, Any], path: Path) -> str:
    """How training drew the windows, `sliding_window_type` ("fixed", the reference's default,
    where the file does not say)."""
    sampling = hf.get("sliding_window_type") or "fixed"
    if sampling not in WINDOW_SAMPLINGS:
        raise ConfigError(
            f"{path}: 'sliding_window_type' = {sampling!r}; expected one of {WINDOW_SAMPLINGS}"
        )
    return sampling


def read_ahn_settings(directory: str | Path) -> dict[str, Any]:
    """`ahn_type`, `full_attention_layers`, the recorded inference `window` and `sinks` (None where
    the config has none: the released checkpoints carry no `num_attn_sinks`), how training drew
    its windows (`window_sampling`) and the whole config.json as `hf`, from an AHN-only or merged
    directory."""
    path = Path(directory) / "config.json"
    hf = read_hf_config(directory)
    implementation = hf.get("_ahn_implementation")
    by_name = {name: t for t, name in IMPLEMENTATIONS.items()}
    if implementation not in by_name:
        raise ConfigError(
            f"{path}: '_ahn_implementation' = {implementation!r}; expected one of "
            f"{sorted(by_name)} (an AHN-only checkpoint of the reference's layout)"
        )
    for flag in ("use_ahn_router", "use_q_proj"):
        if hf.get(flag):
            raise ConfigError(f"{path}: '{flag}' = true is not supported (the paper's AHN is off)")
    ids = str(hf.get("fa_layer_ids") or "").strip()
    try:
        layers = tuple(int(i) for i in ids.split(",")) if ids else ()
    except ValueError as e:
        raise ConfigError(f"{path}: 'fa_layer_ids' = {ids!r} is not a comma list of ints") from e
    return {
        "ahn_type": by_name[implementation],
        "full_attention_layers": layers,
        "window": _optional_int(hf, "sliding_window", path, 1),
        "sinks": _optional_int(hf, "num_attn_sinks", path, 0),
        "window_sampling": _window_sampling(hf, path),
        "hf": hf,
    }


def load_ahn_weights(
    directory: str | Path,
    config: ModelConfig,
    param_shapes: Mapping[ParamPath, tuple[int, ...]],
    *,
    merged: bool = False,
) -> dict[ParamPath, np.ndarray]:
    """Our stacked AHN parameters (fp32) from an AHN-only directory, or from a merged one
    (`merged`: its base tensors are left alone); every AHN tensor is checked against `config`
    first, and one error names each missing, unexpected or mis-shaped one."""
    if config.ahn_type not in AHN_TYPES:
        raise ConfigError(f"config has no AHN type (ahn_type={config.ahn_type!r})")
    maps = ahn_tensor_maps(config, param_shapes)
    infos = safetensors_io.tensor_index(directory)
    if merged:
        infos = {name: info for name, info in infos.items() if is_ahn_tensor(name)}
    check_fits(
        maps, {n: info.shape for n, info in infos.items()}, tied=False, source=str(directory)
    )
    params = {}
    for m in maps:
        if m.path not in params:
            params[m.path] = np.empty(param_shapes[m.path], np.float32)
        params[m.path][m.layer] = m.to_ours(safetensors_io.read_tensor(infos[m.hf_name]))
    return params


def save_ahn_weights(
    directory: str | Path,
    config: ModelConfig,
    params: Mapping[ParamPath, np.ndarray],
    *,
    window: int,
    sinks: int,
    loss: str = "kl",
    window_sampling: str = "fixed",
    tensor_dtypes: Mapping[str, str] | None = None,
) -> Path:
    """Write our AHN parameters (paths under `layers.ahn`) in the reference's layout, the
    config.json recording `window` and `sinks` (the inference W and S), the training `loss` and
    `window_sampling` (`ahn_hf_config`). `tensor_dtypes` (HF tensor name -> dtype name) casts
    tensors on writing; the others keep their array's dtype."""
    directory = Path(directory)
    # checks W, S first
    hf_config = ahn_hf_config(
        config, window=window, sinks=sinks, loss=loss, window_sampling=window_sampling
    )
    shapes = {path: tuple(np.shape(a)) for path, a in params.items()}
    plans = []
    for m in ahn_tensor_maps(config, shapes):
        array = np.asarray(params[m.path][m.layer])
        if tensor_dtypes is not None and m.hf_name in tensor_dtypes:
            array = array.astype(jnp.dtype(tensor_dtypes[m.hf_name]))
        plans.append(
            safetensors_io.TensorPlan(
                m.hf_name, m.hf_shape, array.dtype, lambda m=m, a=array: m.to_hf(a)
            )
        )
    with staging.staged(directory) as (partial,):  # whole or not at all
        desc = f"writing {directory}"
        safetensors_io.write_checkpoint(partial, plans, max_shard_bytes=2**62, desc=desc)  # 1 file
        (partial / "config.json").write_text(json.dumps(hf_config, indent=2))
    return directory


@dataclasses.dataclass(frozen=True)
class AhnRecord:
    """What the config.json of loaded AHN weights records beyond the model (`read_ahn_settings`):
    `from_pretrained` keeps it on the model (`AhnModel.ahn_record`), so that `save_ahn` writes
    the weights back with it instead of the defaults."""

    window: int = DEFAULT_WINDOW
    sinks: int = DEFAULT_SINKS
    window_sampling: str = "fixed"
    loss: str = "kl"

    @classmethod
    def read(cls, directory: str | Path) -> AhnRecord:
        """The file's record; W and S the defaults where it has none (the released configs carry
        no num_attn_sinks), as every tool reads them."""
        found = read_ahn_settings(directory)
        loss = found["hf"].get("loss_type") or ["kl"]  # kept as the file names it
        loss = "+".join(map(str, loss)) if isinstance(loss, list) else str(loss)
        recorded = {name: found[name] for name in ("window", "sinks") if found[name] is not None}
        return cls(**recorded, window_sampling=found["window_sampling"], loss=loss)


def save_model_ahn(
    model, directory: str | Path, *, window: int | None = None, sinks: int | None = None
) -> Path:
    """`AhnModel.save_ahn`: a model's AHN weights in the reference's layout; W and S as given,
    else as the model's `ahn_record` has them, else DEFAULT_WINDOW / DEFAULT_SINKS. The model is
    taken by what it has (`config`, its nnx state, `ahn_record`), as this module must not import
    ahn_jax.model (which imports it: tests/test_architecture.py)."""
    config = model.config
    record = model.ahn_record or AhnRecord()
    window = record.window if window is None else window
    sinks = record.sinks if sinks is None else sinks
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    params = {path: np.asarray(v) for path, v in flat.items() if is_ahn_param(path)}
    if config.ahn_type is None or not params:
        raise ConfigError(
            f"the model has no AHN weights to save to {directory} (ahn_type={config.ahn_type!r})"
        )
    return save_ahn_weights(
        directory, config, params, window=window, sinks=sinks, loss=record.loss,
        window_sampling=record.window_sampling,
    )  # fmt: skip
