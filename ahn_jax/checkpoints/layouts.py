"""The three HF layouts of a model with AHN weights, and the moves between them.

- base: a plain Qwen2 directory (safetensors, single or sharded, config.json, tokenizer files);
  what `convert --to_hf` writes and transformers loads as it is.
- AHN-only: `model.layers.{i}.ahn.fn.*` in one `model.safetensors` and a Qwen2 config.json
  (rebuilt from the model's: no token ids) with the reference's AHN fields (`save_ahn_only`
  true); the released checkpoints' layout,
  written by `AhnModel.save_ahn` and `convert --ahn_only` (ahn_jax/checkpoints/ahn_weights.py).
- merged: both sets of tensors in one directory and config.json with the AHN fields
  (`save_ahn_only` false), as the reference's merge_weights.py writes it.

`merge` and `split` move between them without building a model: each tensor's bytes are copied
as stored (no dtype round trip; the reference's merge casts everything to bf16, this does not),
one tensor at a time, so split(merge(base, ahn)) gives back base and ahn tensor by tensor.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ahn_jax.checkpoints import ahn_weights, converted, hf_naming, safetensors_io, staging
from ahn_jax.checkpoints.hf_config import from_hf_config, read_hf_config
from ahn_jax.checkpoints.pretrained import check_holds_a_base, param_shapes
from ahn_jax.config import ConfigError

DEFAULT_SHARD_BYTES = 5 * 2**30


def _model_config(hf_config: Mapping[str, Any], ahn_settings=None):
    """The ModelConfig a config.json describes, with the AHN `ahn_settings` name (as
    `ahn_weights.read_ahn_settings` returns them)."""
    config = from_hf_config(hf_config)
    if ahn_settings is None:
        return config
    return config.replace(
        ahn_type=ahn_settings["ahn_type"],
        full_attention_layers=ahn_settings["full_attention_layers"],
    )


def _check_tensors(infos, config, source: Path, *, base: bool = True) -> None:
    """The tensors fit `config` — its base (with `base`) and its AHN weights, when it has them:
    one error names every missing, unexpected and mis-shaped tensor."""
    shapes = param_shapes(config)
    maps = hf_naming.tensor_maps(config, shapes) if base else []
    if config.ahn_type is not None:
        maps += ahn_weights.ahn_tensor_maps(config, shapes)
    found_shapes = {name: info.shape for name, info in infos.items()}
    tied = base and config.tie_word_embeddings
    hf_naming.check_fits(maps, found_shapes, tied=tied, source=str(source))


def _copy_plans(infos: Iterable[safetensors_io.TensorInfo]) -> list[safetensors_io.TensorPlan]:
    """Plans that write each tensor's stored bytes, read in file order when their turn comes."""
    ordered = sorted(infos, key=lambda info: (str(info.file), info.begin))
    return [
        safetensors_io.TensorPlan(
            info.name, info.shape, info.dtype, functools.partial(safetensors_io.read_tensor, info)
        )
        for info in ordered
    ]


def with_both_key_sets(hf: Mapping[str, Any]) -> dict[str, Any]:
    """A config.json that transformers 4 and 5 read alike. 5 reads `rope_parameters` and `dtype`
    and converts the 4.x keys itself; 4 reads `rope_theta` (without it, it builds theta 10,000
    silently), `rope_scaling` and `torch_dtype`, which a config saved by transformers 5 lacks:
    they are added from the 5.x ones. Nothing present is changed."""
    hf = dict(hf)
    params = hf.get("rope_parameters")
    if isinstance(params, Mapping):
        if "rope_theta" not in hf and params.get("rope_theta") is not None:
            hf["rope_theta"] = params["rope_theta"]
        scaled = params.get("rope_type", params.get("type", "default")) != "default"
        if scaled and hf.get("rope_scaling") is None:
            hf["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    if hf.get("dtype") is not None and "torch_dtype" not in hf:
        hf["torch_dtype"] = hf["dtype"]
    return hf


def _write(
    directory: Path, plans, hf_config: Mapping[str, Any], max_shard_bytes: int, *, desc: str
) -> None:
    safetensors_io.write_checkpoint(directory, plans, max_shard_bytes=max_shard_bytes, desc=desc)
    config = with_both_key_sets(hf_config)
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _copy_side_files(source: Path, directory: Path) -> None:
    """Tokenizer and generation config, as merge_weights.py saves them beside the weights."""
    for name in converted.SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)


def split(
    merged_dir: str | Path,
    base_out: str | Path,
    ahn_out: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> tuple[Path, Path]:
    """A merged directory -> a base directory (every non-AHN tensor, config.json without the AHN
    fields, the side files) and an AHN-only one (one file, config.json with `save_ahn_only`)."""
    merged_dir, base_out, ahn_out = Path(merged_dir), Path(base_out), Path(ahn_out)
    if base_out.resolve() == ahn_out.resolve():
        raise ConfigError(
            f"--out and --ahn_out name one directory ({base_out}): the base and the AHN weights "
            "need two"
        )
    for outer, inner in ((base_out, ahn_out), (ahn_out, base_out)):
        if outer.resolve() in inner.resolve().parents:  # one would not be a checkpoint alone
            raise ConfigError(f"--out and --ahn_out must not nest: {inner} lies inside {outer}")
    hf = read_hf_config(merged_dir)
    if hf.get("_ahn_implementation") is None:
        raise ConfigError(
            f"{merged_dir / 'config.json'} has no '_ahn_implementation': not a merged checkpoint "
            "(base + AHN weights)"
        )
    check_holds_a_base(merged_dir, "not a merged checkpoint, it is already the AHN-only half")
    staging.require_empty(base_out, ahn_out)  # before reading; `staged` checks it again
    infos = safetensors_io.tensor_index(merged_dir)
    _check_tensors(infos, _model_config(hf, ahn_weights.read_ahn_settings(merged_dir)), merged_dir)
    ahn = [info for name, info in infos.items() if ahn_weights.is_ahn_tensor(name)]
    base = [info for name, info in infos.items() if not ahn_weights.is_ahn_tensor(name)]
    with staging.staged(base_out, ahn_out) as (base_partial, ahn_partial):  # both or neither
        base_hf = ahn_weights.base_hf_config(hf)
        _write(
            base_partial, _copy_plans(base), base_hf, max_shard_bytes, desc=f"writing {base_out}"
        )
        _copy_side_files(merged_dir, base_partial)
        ahn_hf = {**hf, "save_ahn_only": True}
        _write(ahn_partial, _copy_plans(ahn), ahn_hf, 2**62, desc=f"writing {ahn_out}")  # one file
    return base_out, ahn_out


def merged_hf_config(base_hf: Mapping[str, Any], ahn_hf: Mapping[str, Any]) -> dict[str, Any]:
    """The base's config.json with the AHN fields of the AHN-only one, `save_ahn_only` false.

    A field the AHN config lacks is dropped rather than left as the base's: the base's own
    `sliding_window` (Qwen2.5 ships 32768 or 131072) would otherwise read as AHN's W; that one is
    written null (no window) instead.
    """
    merged = {k: v for k, v in base_hf.items() if k not in ahn_weights.AHN_CONFIG_KEYS}
    merged.update({k: ahn_hf[k] for k in ahn_weights.AHN_CONFIG_KEYS if k in ahn_hf})
    merged["save_ahn_only"] = False
    # and a missing one null: transformers 4 takes an absent key as a 4096 window for its masks
    merged.setdefault("sliding_window", None)
    return merged


def merge(
    base_dir: str | Path,
    ahn_dir: str | Path,
    out: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """A base directory and an AHN-only one (or a merged one's AHN tensors) -> the merged layout:
    the base's tensors, then the AHN's, each copied as stored; config.json from
    `merged_hf_config`; the base's side files."""
    base_dir, ahn_dir, out = Path(base_dir), Path(ahn_dir), Path(out)
    base_hf = read_hf_config(base_dir)
    check_holds_a_base(
        base_dir, "give the base model's directory as the base (--hf_dir) and this one as the AHN "
        "weights (--ahn_dir)",
    )  # fmt: skip
    if base_hf.get("_ahn_implementation") is not None:
        raise ConfigError(
            f"{base_dir / 'config.json'} has '_ahn_implementation': {base_dir} already holds AHN "
            "weights (split it first: --split)"
        )
    settings = ahn_weights.read_ahn_settings(ahn_dir)
    staging.require_empty(out)  # before reading; `staged` checks it again
    base = safetensors_io.tensor_index(base_dir)
    ahn = safetensors_io.tensor_index(ahn_dir)
    if ahn_weights.hf_layout(ahn_dir) == "merged":  # its AHN tensors, as from_pretrained's --ahn
        ahn = {name: info for name, info in ahn.items() if ahn_weights.is_ahn_tensor(name)}
    _check_tensors(base, _model_config(base_hf), base_dir)
    config = merged_hf_config(base_hf, settings["hf"])
    # the AHN tensors against the base's dimensions (the AHN config's could differ from them)
    _check_tensors(ahn, _model_config(config, settings), ahn_dir, base=False)
    plans = _copy_plans(base.values()) + _copy_plans(ahn.values())
    with staging.staged(out) as (partial,):
        _write(partial, plans, config, max_shard_bytes, desc=f"writing {out}")
        _copy_side_files(base_dir, partial)
    return out
