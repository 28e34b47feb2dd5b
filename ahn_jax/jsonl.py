"""JSON Lines, the one reader of the package's JSONL inputs: training data, evaluation data, prompts
to generate from, an evaluation's saved predictions.

Line numbers count from 1 and include blank lines (which hold no record), so that `path:line`
finds the line in an editor. What a caller does with a line that is not JSON is its own choice:
the error says where and why, and the caller raises it, skips the line or counts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class InvalidJsonError(ValueError):
    """A line that is not JSON: `path:line: invalid JSON (why)` (without `path:line: ` when the
    line's place is not known)."""

    def __init__(self, why: str, path: str | Path | None = None, number: int | None = None):
        where = "" if path is None else f"{path}:{number}: "
        super().__init__(f"{where}invalid JSON ({why})")
        self.path, self.number = path, number


def loads(line: str, path: str | Path | None = None, number: int | None = None) -> Any:
    """One line's record; InvalidJsonError if it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidJsonError(f"{e.msg} at column {e.colno}", path, number) from e


def file_lines(path: str | Path) -> list[bytes]:
    """A JSONL file's lines without their b"\n" (a last line without one included). Only "\n"
    ends a line: JSON text may hold U+2028, U+2029 or U+0085 unescaped (json.dumps with
    ensure_ascii=False writes them so), which `str.splitlines` would also split at."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    return lines[:-1] if lines and not lines[-1] else lines


def decode_line(line: bytes, path: str | Path | None = None, number: int | None = None) -> str:
    """One line as UTF-8; InvalidJsonError (JSON text is UTF-8) where it is not."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJsonError(
            f"not UTF-8: byte {line[e.start]:#x} at {e.start}", path, number
        ) from e


def read_jsonl(
    path: str | Path, *, on_invalid: Callable[[InvalidJsonError], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a UTF-8 JSONL file.

    A line that is not JSON (or not UTF-8) raises InvalidJsonError; with `on_invalid`, it is
    handed the error instead (it may raise it) and the line is skipped.
    """
    for number, raw in enumerate(file_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            record = loads(decode_line(raw, path, number), path, number)
        except InvalidJsonError as e:
            if on_invalid is None:
                raise
            on_invalid(e)
            continue
        yield number, record
