"""AHN-only weights in the reference's layout: `model.safetensors` + `config.json`.

This is how the released checkpoints (ByteDance-Seed/AHN-{GDN,DN,Mamba2}-for-Qwen-2.5-Instruct-*)
are stored: tensors `model.layers.{i}.ahn.fn.<name>` in torch layout, and the base model's
config.json with the reference's AHN fields (`_ahn_implementation`, `fa_layer_ids`, ...). They run
on top of the base model they were trained for (docs/method.md §Variants).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ahn_jax.checkpoints import safetensors_io
from ahn_jax.checkpoints.converted import ParamPath
from ahn_jax.checkpoints.hf_config import to_hf_config
from ahn_jax.checkpoints.hf_naming import TensorMap, check_fits, layer_maps
from ahn_jax.config import AHN_TYPES, ConfigError, ModelConfig

IMPLEMENTATIONS = {"gdn": "GatedDeltaNet", "dn": "DeltaNet", "mamba2": "Mamba2"}

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
    table = [(ref_name, (ours,), kind) for ref_name, ours, kind in _TENSORS[config.ahn_type]]
    return layer_maps(
        config.num_layers, table, param_shapes, hf_prefix="ahn.fn.", path_prefix=("ahn",)
    )


def ahn_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The base model's config.json plus the reference's AHN fields."""
    hf = to_hf_config(config)
    hf.update(
        _layer_implementation="Qwen2MemDecoderLayer",
        _ahn_implementation=IMPLEMENTATIONS[config.ahn_type],
        fa_layer_ids=",".join(str(i) for i in config.full_attention_layers),
        loss_type=["kl"],
        use_ahn_router=False,
        use_q_proj=False,
    )
    return hf


def read_ahn_settings(directory: str | Path) -> dict[str, Any]:
    """`ahn_type` and `full_attention_layers` from an AHN directory's config.json."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in AHN directory {directory}")
    hf = json.loads(path.read_text())
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
    return {"ahn_type": by_name[implementation], "full_attention_layers": layers, "hf": hf}


def load_ahn_weights(
    directory: str | Path, config: ModelConfig, param_shapes: Mapping[ParamPath, tuple[int, ...]]
) -> dict[ParamPath, np.ndarray]:
    """Our stacked AHN parameters (fp32) from an AHN-only directory; every tensor is checked
    against `config` first, and one error names each missing, unexpected or mis-shaped one."""
    if config.ahn_type not in AHN_TYPES:
        raise ConfigError(f"config has no AHN type (ahn_type={config.ahn_type!r})")
    maps = ahn_tensor_maps(config, param_shapes)
    infos = safetensors_io.tensor_index(directory)
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
    directory: str | Path, config: ModelConfig, params: Mapping[ParamPath, np.ndarray]
) -> Path:
    """Write our AHN parameters (paths under `layers.ahn`) in the reference's layout."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"output directory {directory} exists and is not empty")
    shapes = {path: tuple(np.shape(a)) for path, a in params.items()}
    plans = []
    for m in ahn_tensor_maps(config, shapes):
        array = np.asarray(params[m.path][m.layer])
        plans.append(
            safetensors_io.TensorPlan(
                m.hf_name, m.hf_shape, array.dtype, lambda m=m, a=array: m.to_hf(a)
            )
        )
    safetensors_io.write_checkpoint(directory, plans, max_shard_bytes=2**62)  # one file
    (directory / "config.json").write_text(json.dumps(ahn_hf_config(config), indent=2))
    return directory
