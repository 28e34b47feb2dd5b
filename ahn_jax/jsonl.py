"""JSON Lines, the one reader of the package's JSONL inputs: training data, evaluation data, prompts
to generate from, an evaluation's saved predictions; and the outputs that runs append to as they
go and resume from (`read_appended`, `write_whole`).

Line numbers count from 1 and include blank lines (which hold no record), so that `path:line`
finds the line in an editor. What a caller does with a line that is not JSON is its own choice:
the error says where and why, and the caller raises it, skips the line or counts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from absl import logging


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


def read_appended(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, record) of a file that a run appends records to, as a crash leaves it: a last
    line cut short is dropped, and a last record missing its newline gets one, so that the next
    record appended starts a line (the file is repaired in place, `write_whole`). A damaged line
    before the last raises InvalidJsonError: that is not a crash's doing."""
    lines = file_lines(path)

    def torn(error: InvalidJsonError) -> None:
        if error.number != len(lines):
            raise error
        logging.warning("%s:%d: dropping a partly written record", path, error.number)

    records = list(read_jsonl(path, on_invalid=torn))
    kept = lines[: records[-1][0]] if records else []
    if len(kept) < len(lines) or not Path(path).read_bytes().endswith(b"\n"):
        write_whole(path, b"".join(line + b"\n" for line in kept))
    return records


def write_whole(path: str | Path, data: str | bytes) -> None:
    """`path` written whole or not at all (a temporary file, then one rename): an interruption
    leaves the old file or the new one, never an empty or half-written one."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        temporary.write_text(data, encoding="utf-8")
    else:
        temporary.write_bytes(data)
    os.replace(temporary, path)
