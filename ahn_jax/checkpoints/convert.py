"""HF safetensors <-> Orbax conversion of Qwen2/Qwen2.5 checkpoints (the command line is
ahn_jax/convert.py):

  python -m ahn_jax.convert --hf_dir DIR --out CKPT [--dtype bfloat16|float32]
  python -m ahn_jax.convert --to_hf --ckpt CKPT --out DIR [--max_shard_gb 5]
  python -m ahn_jax.convert --ahn_only --ckpt CKPT --out DIR [--window 32640 --sinks 128]
  python -m ahn_jax.convert --merge --hf_dir BASE --ahn_dir AHN --out MERGED [--max_shard_gb 5]
  python -m ahn_jax.convert --split --hf_dir MERGED --out BASE --ahn_out AHN [--max_shard_gb 5]

--ahn_only exports the AHN weights of a checkpoint that holds them in the reference's layout
(`model.layers.{i}.ahn.fn.*` + config.json recording the inference W and S), which
`from_pretrained(base, ahn_path=DIR)` and the reference's `merge_weights.py` read. --merge and
--split move between that, the base and the merged layout (ahn_jax/checkpoints/layouts.py),
copying each tensor's bytes. An --hf_dir in the merged layout converts with its AHN weights;
--to_hf writes the base layout (config.json without the AHN fields).

Every direction streams tensor by tensor: peak memory is about one copy of the weights. Each
writes its output whole or not at all (ahn_jax/checkpoints/staging.py).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np

from ahn_jax.checkpoints import (
    ahn_weights,
    converted,
    hf_naming,
    layouts,
    recorded,
    safetensors_io,
    staging,
)
from ahn_jax.checkpoints.hf_config import from_hf_config, read_hf_config
from ahn_jax.checkpoints.pretrained import (
    check_holds_a_base,
    is_merged,
    iter_hf_params,
    param_shapes,
)
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


def _ahn_tensor_dtypes(hf_dir: Path) -> dict[str, str]:
    """The dtype of each of a merged directory's AHN tensors, by name (a checkpoint may keep some
    in fp32 beside bf16 ones, as training in mixed precision leaves them)."""
    infos = safetensors_io.tensor_index(hf_dir)
    return {n: np.dtype(i.dtype).name for n, i in infos.items() if ahn_weights.is_ahn_tensor(n)}


def hf_to_orbax(hf_dir: str | Path, out: str | Path, *, dtype: str | None = None) -> Path:
    """Convert an HF directory to an Orbax checkpoint; `dtype=None` keeps the checkpoint's own.
    A merged directory's AHN weights come along (fp32, as the model holds them; the marker keeps
    their dtype in the directory)."""
    hf_dir, out = Path(hf_dir), Path(out)
    check_holds_a_base(
        hf_dir, "convert its base (or a merged directory), or --merge it with its base first"
    )
    hf_config = read_hf_config(hf_dir)
    dtype = dtype or _source_dtype(hf_dir)
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"--dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    config = from_hf_config(hf_config, param_dtype=dtype, dtype=dtype)
    merged = is_merged(hf_dir)
    pieces = iter_hf_params(hf_dir, config, skip_ahn=merged)
    ahn = None
    if merged:
        found = ahn_weights.read_ahn_settings(hf_dir)
        ahn_type, layers = found["ahn_type"], found["full_attention_layers"]
        # the marker's JSON; the AHN tensors' own dtypes, which `orbax_to_ahn` writes again
        ahn = {"ahn_type": ahn_type, "full_attention_layers": list(layers),
               "tensor_dtypes": _ahn_tensor_dtypes(hf_dir)}  # fmt: skip
        ahn_config = config.replace(ahn_type=ahn_type, full_attention_layers=layers)
        shapes = {p: s for p, s in param_shapes(ahn_config).items() if ahn_weights.is_ahn_param(p)}
        params = ahn_weights.load_ahn_weights(hf_dir, ahn_config, shapes, merged=True)
        pieces = itertools.chain(pieces, params.items())
    # a tensor that does not fit, found while writing, or an interruption: no half a checkpoint
    with staging.staged(out) as (partial,):
        converted.save_params(
            partial, pieces, hf_config=hf_config, param_dtype=dtype, side_files_from=hf_dir, ahn=ahn
        )
    return out


def orbax_to_hf(ckpt: str | Path, out: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Export a converted checkpoint back to HF safetensors (sharded beyond `max_shard_bytes`).

    Tensors are written parameter by parameter (all layers' q_proj, then all k_proj, ...), each
    parameter read from Orbax only when its first tensor is due, so one parameter is held at a time.
    """
    ckpt, out = Path(ckpt), Path(out)
    marker = converted.read_marker(ckpt)
    staging.require_empty(out)  # before the minutes of writing; `staged` checks it again
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
    with staging.staged(out) as (partial,):
        safetensors_io.write_checkpoint(
            partial, plans, max_shard_bytes=max_shard_bytes, desc=f"writing {out}"
        )
        _write_hf_files(ckpt, partial, hf_config, dtype)
    return out


def _write_hf_files(ckpt: Path, out: Path, hf_config: dict, dtype: str) -> None:
    """config.json and the side files of `orbax_to_hf`'s output."""
    # the base layout (a merged source's AHN fields would announce tensors that are not here),
    # read alike by transformers 4 and 5, and the dtype of the tensors written (the source's
    # config.json is kept verbatim, but `--dtype` may have converted them): transformers loads
    # "auto" as that key says
    hf_config = {**ahn_weights.base_hf_config(hf_config), "dtype": dtype, "torch_dtype": dtype}
    hf_config = layouts.with_both_key_sets(hf_config)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    for name in converted.SIDE_FILES:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, out / name)


def orbax_to_ahn(
    ckpt: str | Path,
    out: str | Path,
    *,
    window: int | None = None,
    sinks: int | None = None,
) -> Path:
    """AHN weights of an Orbax checkpoint -> AHN-only safetensors in the reference's naming, the
    config.json recording `window` and `sinks` for inference (None: what the checkpoint's
    config.json records, kept verbatim from a merged directory, else DEFAULT_WINDOW /
    DEFAULT_SINKS)."""
    ckpt = Path(ckpt)
    marker = converted.read_marker(ckpt)
    staging.require_empty(out)  # before reading the weights; the write checks it again
    if "ahn" not in marker:
        raise ConfigError(f"checkpoint {ckpt} holds no AHN weights (its marker has no 'ahn')")
    defaults = {"window": ahn_weights.DEFAULT_WINDOW, "sinks": ahn_weights.DEFAULT_SINKS}
    given = {"window": window, "sinks": sinks}
    found = recorded.recorded_attention(ckpt, None)
    chosen, _ = recorded.window_and_sinks(given, found, defaults)
    dtype = marker["param_dtype"]
    config = from_hf_config(read_hf_config(ckpt), param_dtype=dtype, dtype=dtype).replace(
        ahn_type=marker["ahn"]["ahn_type"],
        full_attention_layers=tuple(marker["ahn"]["full_attention_layers"]),
    )
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    shapes = {p: s for p, s in param_shapes(config).items() if ahn_weights.is_ahn_param(p)}
    params = {
        path: np.asarray(
            converted.restore_param(
                ckpt, path, jax.ShapeDtypeStruct(shape, np.float32, sharding=cpu)
            )
        )
        for path, shape in shapes.items()
    }
    # stored fp32; each tensor written in the dtype the merged directory had it in (exact: fp32
    # holds every bf16 / fp16 value). Markers before per-tensor dtypes named one for all.
    tensor_dtypes = marker["ahn"].get("tensor_dtypes")
    if tensor_dtypes is None:
        one = marker["ahn"].get("dtype", "float32")
        tensor_dtypes = {m.hf_name: one for m in ahn_weights.ahn_tensor_maps(config, shapes)}
    return ahn_weights.save_ahn_weights(
        out, config, params, **chosen, window_sampling=found.window_sampling,
        tensor_dtypes=tensor_dtypes,
    )  # fmt: skip


class ArgumentError(ValueError):
    """The arguments do not describe one conversion (the CLI reports it as a usage error)."""


# the directories each mode reads or writes beside --out (None: HF -> Orbax)
_MODE_DIRECTORIES = {
    None: {"hf_dir"},
    "--to_hf": {"ckpt"},
    "--ahn_only": {"ckpt"},
    "--merge": {"hf_dir", "ahn_dir"},
    "--split": {"hf_dir", "ahn_out"},
}


def _check_flags_apply(mode: str | None, **directories) -> None:
    """A directory flag the mode does not read is an error (it was ignored), as is an Orbax
    checkpoint given as --hf_dir."""
    for name, value in directories.items():
        if value is not None and name not in _MODE_DIRECTORIES[mode]:
            raise ArgumentError(f"--{name} is not read by {mode or 'HF -> Orbax (--hf_dir)'}")
    hf_dir = directories["hf_dir"]
    if hf_dir is not None and converted.is_params_checkpoint(Path(hf_dir)):
        raise ArgumentError(
            f"--hf_dir {hf_dir} is an ahn_jax (Orbax) checkpoint: export it with --to_hf --ckpt "
            f"{hf_dir} (or --ahn_only --ckpt for its AHN weights)"
        )


def run(
    *,
    out: str | Path,
    hf_dir: str | Path | None = None,
    ckpt: str | Path | None = None,
    dtype: str | None = None,
    to_hf: bool = False,
    ahn_only: bool = False,
    merge: bool = False,
    split: bool = False,
    ahn_dir: str | Path | None = None,
    ahn_out: str | Path | None = None,
    window: int | None = None,
    sinks: int | None = None,
    max_shard_gb: float | None = None,
) -> Path:
    """The conversion `python -m ahn_jax.convert` runs: `ahn_only` exports the AHN weights of
    `ckpt`, `to_hf` exports `ckpt` to HF safetensors, `merge` joins `hf_dir` and `ahn_dir`,
    `split` parts the merged `hf_dir` into `out` and `ahn_out`, else `hf_dir` is converted."""
    modes = {"ahn_only": ahn_only, "to_hf": to_hf, "merge": merge, "split": split}
    chosen = [f"--{name}" for name, on in modes.items() if on]
    if len(chosen) > 1:
        raise ArgumentError(f"{' and '.join(chosen)} exclude each other: choose one")
    if dtype and (to_hf or merge or split or ahn_only):
        raise ArgumentError("--dtype applies to HF -> Orbax; the other modes keep stored dtypes")
    if not ahn_only and (window, sinks) != (None, None):
        raise ArgumentError("--window and --sinks apply to --ahn_only (the W and S it records)")
    _check_flags_apply(
        chosen[0] if chosen else None, hf_dir=hf_dir, ckpt=ckpt, ahn_dir=ahn_dir, ahn_out=ahn_out
    )
    if max_shard_gb is not None and (ahn_only or not (to_hf or merge or split)):
        raise ArgumentError("--max_shard_gb applies to --to_hf, --merge and --split (HF shards)")
    max_shard_gb = 5.0 if max_shard_gb is None else max_shard_gb
    if not (math.isfinite(max_shard_gb) and max_shard_gb > 0):
        raise ArgumentError(f"--max_shard_gb must be a positive size, got {max_shard_gb}")
    for name, directory in (("--out", out), ("--ahn_out", ahn_out)):
        if directory is not None and Path(directory).exists() and not Path(directory).is_dir():
            raise ArgumentError(f"{name} {directory} is a file: give a new or empty directory")
    shard_bytes = int(max_shard_gb * 2**30)
    if ahn_only or to_hf:
        if not ckpt:
            raise ArgumentError(f"{chosen[0]} needs --ckpt CKPT (an ahn_jax checkpoint)")
        if ahn_only:
            return orbax_to_ahn(ckpt, out, window=window, sinks=sinks)
        return orbax_to_hf(ckpt, out, max_shard_bytes=shard_bytes)
    if not hf_dir:
        raise ArgumentError("--hf_dir DIR is required (or --to_hf --ckpt CKPT to export)")
    if merge:
        if not ahn_dir:
            raise ArgumentError("--merge needs --ahn_dir DIR (the AHN-only weights)")
        return layouts.merge(hf_dir, ahn_dir, out, max_shard_bytes=shard_bytes)
    if split:
        if not ahn_out:
            raise ArgumentError("--split needs --ahn_out DIR (where the AHN-only weights go)")
        return layouts.split(hf_dir, out, ahn_out, max_shard_bytes=shard_bytes)[0]
    return hf_to_orbax(hf_dir, out, dtype=dtype)
