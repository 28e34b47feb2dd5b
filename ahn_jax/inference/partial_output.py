"""A JSONL generation's finished batches kept on disk as they finish (`<out>.partial`), so that an
interrupted `python -m ahn_jax.generate --jsonl ... --out F` resumes after them: the same command
generates only the prompts not yet done, and writes F whole at the end.

The file's first line records what the completions depend on (the prompts file's bytes, the model,
the flags); a run with other settings refuses to resume from it. Each later line is one prompt's
completion, {"index": i, "completion": text}, in the order batches finished; a line cut short by
the interruption is dropped (its batch is generated again)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from absl import app

from ahn_jax import jsonl


class PartialOutput:
    """`<out>.partial` for the run whose settings are `settings` (JSON-serialisable)."""

    def __init__(self, out: str | Path, settings: dict):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".partial")
        self.settings = json.loads(json.dumps(settings))

    def done(self) -> dict[int, str]:
        """The completions an earlier run of these settings left ({prompt index: text}); starts
        the file when there is none."""
        if not self.path.exists():
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n", encoding="utf-8")
            return {}
        lines, records = jsonl.file_lines(self.path), []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(jsonl.loads(jsonl.decode_line(line, self.path, number)))
            except jsonl.InvalidJsonError:
                if number != len(lines):  # only the last line can be cut short
                    raise app.UsageError(
                        f"{self.path}:{number} is damaged: delete the file to start over"
                    ) from None
                lines = lines[:-1]
        if not records or records[0] != {"settings": self.settings}:
            raise app.UsageError(
                f"{self.path} holds the completions of a run with other settings (prompts, "
                "model or flags): delete it to start over, or run that command again"
            )
        # whole lines only, each ending in a newline, before more are appended
        self.path.write_bytes(b"".join(line + b"\n" for line in lines))
        return {r["index"]: r["completion"] for r in records[1:]}

    def add(self, completions: dict[int, str]) -> None:
        """One finished batch's completions, appended in one write."""
        text = "".join(
            json.dumps({"index": i, "completion": c}, ensure_ascii=False) + "\n"
            for i, c in completions.items()
        )
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)

    def finish(self, lines: list[str]) -> None:
        """Write the output whole (replaced at once: an interruption leaves the old or the new)
        and remove the partial file."""
        temporary = self.out.with_name(self.out.name + ".tmp")
        temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(temporary, self.out)
        self.path.unlink()


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
