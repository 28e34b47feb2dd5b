"""HF safetensors <-> Orbax conversion of Qwen2/Qwen2.5 checkpoints (the command line is
ahn_jax/convert.py):

  python -m ahn_jax.convert --hf_dir DIR --out CKPT [--dtype bfloat16|float32]
  python -m ahn_jax.convert --to_hf --ckpt CKPT --out DIR [--max_shard_gb 5]
  python -m ahn_jax.convert --ahn_only --ckpt CKPT --out DIR

--ahn_only exports the AHN weights of a checkpoint that holds them in the reference's layout
(`model.layers.{i}.ahn.fn.*` + config.json), which `from_pretrained(base, ahn_path=DIR)` and the
reference's `merge_weights.py` read.

Both directions stream tensor by tensor: peak memory is about one copy of the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

from ahn_jax.checkpoints import ahn_weights, converted, hf_naming, safetensors_io
from ahn_jax.checkpoints.hf_config import from_hf_config, read_hf_config
from ahn_jax.checkpoints.pretrained import iter_hf_params, param_shapes
from ahn_jax.config import DTYPES, ConfigError

DTYPE_CHOICES = tuple(DTYPES)
USER_ERRORS = (
    ConfigError,
    safetensors_io.CheckpointFormatError,
    hf_naming.CheckpointMismatchError,
    FileNotFoundError,
    FileExistsError,
)


def _source_dtype(hf_dir: Path) -> str:
    infos = safetensors_io.tensor_index(hf_dir)
    info = infos.get("model.embed_tokens.weight") or next(iter(infos.values()))
    return np.dtype(info.dtype).name


def hf_to_orbax(hf_dir: str | Path, out: str | Path, *, dtype: str | None = None) -> Path:
    """Convert an HF directory to an Orbax checkpoint; `dtype=None` keeps the checkpoint's own."""
    hf_dir, out = Path(hf_dir), Path(out)
    hf_config = read_hf_config(hf_dir)
    dtype = dtype or _source_dtype(hf_dir)
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"--dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    config = from_hf_config(hf_config, param_dtype=dtype, dtype=dtype)
    converted.save_params(
        out,
        iter_hf_params(hf_dir, config),
        hf_config=hf_config,
        param_dtype=dtype,
        side_files_from=hf_dir,
    )
    return out


def orbax_to_hf(ckpt: str | Path, out: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Export a converted checkpoint back to HF safetensors (sharded beyond `max_shard_bytes`).

    Tensors are written parameter by parameter (all layers' q_proj, then all k_proj, ...), each
    parameter read from Orbax only when its first tensor is due, so one parameter is held at a time.
    """
    ckpt, out = Path(ckpt), Path(out)
    marker = converted.read_marker(ckpt)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {out} exists and is not empty")
    hf_config = read_hf_config(ckpt)
    dtype = marker["param_dtype"]
    config = from_hf_config(hf_config, param_dtype=dtype, dtype=dtype)
    shapes = param_shapes(config)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    held: dict[tuple[str, ...], np.ndarray] = {}

    def param(path):
        if path not in held:
            held.clear()
            target = jax.ShapeDtypeStruct(shapes[path], config.jnp_param_dtype, sharding=cpu)
            held[path] = np.asarray(converted.restore_param(ckpt, path, target))
        return held[path]

    def producer(m: hf_naming.TensorMap):
        def produce():
            array = param(m.path)
            return m.to_hf(array if m.layer is None else array[m.layer])

        return produce

    maps = hf_naming.tensor_maps(config, shapes)
    order = {path: i for i, path in enumerate(shapes)}
    maps.sort(key=lambda m: (order[m.path], m.layer or 0))
    np_dtype = np.dtype(config.jnp_param_dtype)
    plans = [safetensors_io.TensorPlan(m.hf_name, m.hf_shape, np_dtype, producer(m)) for m in maps]
    safetensors_io.write_checkpoint(out, plans, max_shard_bytes=max_shard_bytes)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    for name in converted.SIDE_FILES:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, out / name)
    return out


def orbax_to_ahn(ckpt: str | Path, out: str | Path) -> Path:
    """AHN weights of an Orbax checkpoint -> AHN-only safetensors in the reference's naming."""
    ckpt = Path(ckpt)
    marker = converted.read_marker(ckpt)
    if "ahn" not in marker:
        raise ConfigError(f"checkpoint {ckpt} holds no AHN weights (its marker has no 'ahn')")
    dtype = marker["param_dtype"]
    config = from_hf_config(read_hf_config(ckpt), param_dtype=dtype, dtype=dtype).replace(
        ahn_type=marker["ahn"]["ahn_type"],
        full_attention_layers=tuple(marker["ahn"]["full_attention_layers"]),
    )
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    params = {
        path: np.asarray(
            converted.restore_param(
                ckpt, path, jax.ShapeDtypeStruct(shape, np.float32, sharding=cpu)
            )
        )
        for path, shape in param_shapes(config).items()
        if path[:2] == ("layers", "ahn")
    }
    return ahn_weights.save_ahn_weights(out, config, params)


class ArgumentError(ValueError):
    """The arguments do not describe one conversion (the CLI reports it as a usage error)."""


def run(
    *,
    out: str | Path,
    hf_dir: str | Path | None = None,
    ckpt: str | Path | None = None,
    dtype: str | None = None,
    to_hf: bool = False,
    ahn_only: bool = False,
    max_shard_gb: float = 5.0,
) -> Path:
    """The conversion `python -m ahn_jax.convert` runs: `ahn_only` exports the AHN weights of
    `ckpt`, `to_hf` exports `ckpt` to HF safetensors, else `hf_dir` is converted (to `dtype`)."""
    if ahn_only:
        if not ckpt:
            raise ArgumentError(
                "--ahn_only needs --ckpt CKPT (an ahn_jax checkpoint with AHN weights)"
            )
        return orbax_to_ahn(ckpt, out)
    if to_hf:
        if not ckpt:
            raise ArgumentError("--to_hf needs --ckpt CKPT (the Orbax checkpoint to export)")
        if dtype:
            raise ArgumentError("--dtype applies to HF -> Orbax; an export keeps the stored dtype")
        return orbax_to_hf(ckpt, out, max_shard_bytes=int(max_shard_gb * 2**30))
    if not hf_dir:
        raise ArgumentError("--hf_dir DIR is required (or --to_hf --ckpt CKPT to export)")
    return hf_to_orbax(hf_dir, out, dtype=dtype)
