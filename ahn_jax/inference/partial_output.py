"""A JSONL generation's finished batches kept on disk as they finish (`<out>.partial`), so that an
interrupted `python -m ahn_jax.generate --jsonl ... --out F` resumes after them: the same command
generates only the prompts not yet done, and writes F whole at the end.

The file's first line records what the completions depend on (the prompts file's bytes, the model,
the flags); a run with other settings refuses to resume from it. Each later line is one prompt's
completion, {"index": i, "completion": text}, in the order batches finished; a line cut short by
the interruption is dropped (its batch is generated again)."""

from __future__ import annotations

import json
from pathlib import Path

from absl import app

from ahn_jax import jsonl, setting_changes


class PartialOutput:
    """`<out>.partial` for the run whose settings are `settings` (JSON-serialisable)."""

    def __init__(self, out: str | Path, settings: dict):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".partial")
        self.settings = json.loads(json.dumps(settings))

    def done(self) -> dict[int, str]:
        """The completions an earlier run of these settings left ({prompt index: text}). The file
        is started over where there is none, or where it holds no completion yet (a run that
        failed before its first batch may be rerun with other settings)."""
        try:
            records = [r for _, r in jsonl.read_appended(self.path)] if self.path.exists() else []
        except jsonl.InvalidJsonError as error:  # not a crash's doing: only the last line can be
            raise app.UsageError(
                f"{self.path}:{error.number} is damaged: delete the file to start over"
            ) from None
        if len(records) < 2:
            jsonl.write_whole(self.path, json.dumps({"settings": self.settings}) + "\n")
            return {}
        before = records[0].get("settings") if isinstance(records[0], dict) else None
        # a setting recorded as None and one not recorded are the same (setting_changes)
        if changed := _changes(before, self.settings):
            raise app.UsageError(
                f"{self.path} holds the completions of a run with other settings ({changed}): "
                "delete it to start over, or run that command again"
            )
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
        jsonl.write_whole(self.out, "".join(line + "\n" for line in lines))
        self.path.unlink(missing_ok=True)  # a file of no prompts never started one


def _changes(before, now: dict) -> str:
    """ "max_new_tokens: 300 -> 20, ...": what differs between the recorded settings and these."""
    if not isinstance(before, dict):
        return "prompts, model or flags"
    flat = setting_changes.flat
    return ", ".join(setting_changes.changes(flat(before), flat(now)))
