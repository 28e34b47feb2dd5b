"""What the JSONL data files are, before and between runs: a file in a shape the reader does not
take is refused at start-up, naming it (not after thousands of skipped records), and each file's
fingerprint, taken when the run starts, goes with every checkpoint, so that a resume over changed
files is refused (a record added or removed moves every later one in the shuffled order)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from ahn_jax.config import ConfigError

_EDGE = 1 << 20  # the bytes at each end of a file that its fingerprint hashes


def check_shapes(paths: Sequence[str | Path], fmt: str) -> None:
    """Refuse a file whose first record shows a shape the `fmt` reader does not take: a JSON
    array (LLaMA-Factory's .json files) or, for chat, alpaca records."""
    for path in map(Path, paths):
        if not path.is_file():  # named where the files are indexed
            continue
        first = _first_line(path)
        if first.startswith(b"["):
            raise ConfigError(
                f"data.paths: {path} is a JSON array; the data files are JSON Lines, one record "
                'per line (python -c "import json,sys; [print(json.dumps(r, ensure_ascii=False))'
                f' for r in json.load(open(sys.argv[1]))]" {path} > data.jsonl)'
            )
        try:
            record = json.loads(first)
        except ValueError:  # a bad line is skipped and counted like any other
            continue
        alpaca = isinstance(record, dict) and {"instruction", "output"} <= set(record)
        if fmt == "chat" and alpaca and not {"messages", "conversations"} & set(record):
            raise ConfigError(
                f"data.paths: {path} holds alpaca records (instruction / input / output), which "
                'data.format "chat" does not read: write each as {"messages": [{"role": "user", '
                '"content": instruction, with "\\n" + input if input}, {"role": "assistant", '
                '"content": output}]} (a system field as a first system message)'
            )


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return line.strip()
    return b""


def fingerprints(paths: Sequence[str | Path]) -> list[str]:
    """Each file's size and a SHA-256 of its first and last MiB, in `paths`' order: cheap for
    files of any size."""
    found = []
    for path in map(Path, paths):
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(_EDGE))
            f.seek(max(size - _EDGE, 0))
            digest.update(f.read(_EDGE))
        found.append(f"{size} bytes, {digest.hexdigest()[:16]}")
    return found


def changed_files(saved: list[str] | None, now: list[str], paths: Sequence) -> list[str]:
    """What differs from the files a checkpoint read: each path whose file is not the one at
    the same place of data.paths then (compared by place, not name: a path spelt otherwise, or
    another file under the same name, is the same place), or the number of files. A checkpoint
    written before fingerprints were kept: nothing."""
    if isinstance(saved, dict):  # {path: fingerprint}, as kept for a few commits, in order
        saved = list(saved.values())
    if not saved:
        return []
    if len(saved) != len(now):
        return [f"{len(now)} files where it read {len(saved)}"]
    return [
        f"{path} (other contents)" for path, a, b in zip(paths, saved, now, strict=True) if a != b
    ]
