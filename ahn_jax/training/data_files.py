"""What the JSONL data files are, before and between runs: a file in a shape the reader does not
take is refused at start-up, naming it (not after thousands of skipped records), and each file's
fingerprint goes with every checkpoint, so that a resume over changed files is refused (a record
added or removed moves every later one in the shuffled order)."""

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
                '"content": instruction + "\\n" + input}, {"role": "assistant", "content": '
                "output}]} (a system field as a first system message)"
            )


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return line.strip()
    return b""


def fingerprints(paths: Sequence[str | Path]) -> dict[str, str]:
    """{path: size and a SHA-256 of the first and last MiB}: cheap for files of any size."""
    found = {}
    for path in map(Path, paths):
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(_EDGE))
            f.seek(max(size - _EDGE, 0))
            digest.update(f.read(_EDGE))
        found[str(path)] = f"{size} bytes, {digest.hexdigest()[:16]}"
    return found


def changed_files(saved: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The files, read by both runs, whose fingerprints differ (a checkpoint written before
    fingerprints were kept: none)."""
    saved = saved or {}
    return sorted(path for path in set(saved) & set(now) if saved[path] != now[path])
