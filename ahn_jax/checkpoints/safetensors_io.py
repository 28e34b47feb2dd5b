"""Streaming reads and writes of HF safetensors checkpoints (single file or sharded with an index).

We parse the format ourselves (an 8-byte header length, a JSON header, raw little-endian data) so
that each tensor is read with one `readinto` into its own buffer and written with one `write`: no
mmap of a whole shard stays resident, and peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from tqdm import tqdm

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class CheckpointFormatError(ValueError):
    """A checkpoint directory or file is not something we can read."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the data in `file`
    end: int


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointFormatError(f"{path} is too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > 100_000_000:
            raise CheckpointFormatError(f"{path} has an implausible header length {header_len}")
        try:
            header = json.loads(f.read(header_len))
        except json.JSONDecodeError as e:
            raise CheckpointFormatError(f"{path} has a corrupt safetensors header: {e}") from e
    return header, 8 + header_len


def _file_tensors(path: Path) -> dict[str, TensorInfo]:
    header, data_start = _read_header(path)
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            raise CheckpointFormatError(f"{path}: tensor {name!r} has unsupported dtype {entry}")
        begin, end = entry["data_offsets"]
        infos[name] = TensorInfo(
            name=name,
            file=path,
            dtype=DTYPES[entry["dtype"]],
            shape=tuple(entry["shape"]),
            begin=data_start + begin,
            end=data_start + end,
        )
    return infos


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The safetensors files of an HF checkpoint directory; refuses pickle-only checkpoints.
    `model.safetensors` comes before an index, as transformers looks for them: an unsharded save
    into a directory that held a sharded one removes the shards but leaves their index."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointFormatError(f"{index} is not a valid safetensors index: {e!r}") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise CheckpointFormatError(f"{index} names shard files that do not exist: {absent}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in directory.glob(pattern))
    if pickles:
        raise CheckpointFormatError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickles)}); ahn_jax reads "
            "safetensors only, because unpickling can run arbitrary code. Re-save it with "
            "transformers: model.save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointFormatError(f"no *.safetensors files in {directory}")


def tensor_index(directory: str | Path) -> dict[str, TensorInfo]:
    """Name -> location, dtype and shape of every tensor of a checkpoint (headers only)."""
    infos: dict[str, TensorInfo] = {}
    for path in checkpoint_files(directory):
        for name, info in _file_tensors(path).items():
            if name in infos:
                raise CheckpointFormatError(
                    f"tensor {name!r} appears in both {infos[name].file} and {path}"
                )
            infos[name] = info
    return infos


def read_tensor(info: TensorInfo) -> np.ndarray:
    expected = math.prod(info.shape) * info.dtype.itemsize
    if info.end - info.begin != expected:
        raise CheckpointFormatError(
            f"{info.file}: tensor {info.name!r} has {info.end - info.begin} bytes, "
            f"expected {expected} for shape {info.shape} {info.dtype}"
        )
    buffer = bytearray(expected)
    with open(info.file, "rb") as f:
        f.seek(info.begin)
        if f.readinto(buffer) != expected:
            raise CheckpointFormatError(f"{info.file} is truncated inside tensor {info.name!r}")
    return np.frombuffer(buffer, dtype=info.dtype).reshape(info.shape)


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """What will be written: name, shape, dtype, and a function producing the data when asked."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: object  # Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _write_file(path: Path, plans: list[TensorPlan], metadata: dict[str, str], bar: tqdm) -> None:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for plan in plans:
        header[plan.name] = {
            "dtype": DTYPE_NAMES[plan.dtype],
            "shape": list(plan.shape),
            "data_offsets": [offset, offset + plan.nbytes],
        }
        offset += plan.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned, as upstream
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for plan in plans:
            data = np.ascontiguousarray(plan.produce(), dtype=plan.dtype)
            if data.shape != plan.shape:
                raise ValueError(
                    f"tensor {plan.name!r}: produced {data.shape}, planned {plan.shape}"
                )
            f.write(data.tobytes())
            bar.update(plan.nbytes)


def write_checkpoint(
    directory: str | Path,
    plans: list[TensorPlan],
    *,
    max_shard_bytes: int = 5 * 2**30,
    desc: str | None = None,
) -> list[Path]:
    """Write `model.safetensors`, or shards plus an index when the tensors exceed the limit, with a
    progress bar over the bytes written on stderr (a terminal's only) labelled `desc` (default:
    "writing <directory name>"; a staged write names its final directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for plan in plans:
        if shards[-1] and size + plan.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(plan)
        size += plan.nbytes
    total = sum(plan.nbytes for plan in plans)
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    # minutes of reading and writing on a 14B model: said as it goes, as reading is (pretrained.py)
    desc = desc or f"writing {directory.name}"
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None) as bar:
        for name, shard in zip(names, shards, strict=True):
            _write_file(directory / name, shard, {"format": "pt"}, bar)
    paths = [directory / name for name in names]
    if len(shards) == 1:
        return paths
    weight_map = {
        plan.name: name for name, shard in zip(names, shards, strict=True) for plan in shard
    }
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return paths
