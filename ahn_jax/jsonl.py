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


def read_jsonl(
    path: str | Path, *, on_invalid: Callable[[InvalidJsonError], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a UTF-8 JSONL file.

    A line that is not JSON raises InvalidJsonError; with `on_invalid`, it is handed the error
    instead (it may raise it) and the line is skipped.
    """
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = loads(line, path, number)
        except InvalidJsonError as e:
            if on_invalid is None:
                raise
            on_invalid(e)
            continue
        yield number, record
