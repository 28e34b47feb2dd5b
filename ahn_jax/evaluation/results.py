"""An evaluation's settings and its results on disk: run.json (the settings a resumed run must
match, `check_settings`), predictions.jsonl (one scored record per sample, appended as batches
finish)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from absl import app

from ahn_jax import jsonl, setting_changes
from ahn_jax.cli import file_digest
from ahn_jax.evaluation.ruler import VARIANTS
from ahn_jax.evaluation.tasks import BENCHMARKS

# Each task is of one kind, which decides its prompts, score, chat rule and extra settings: a
# "benchmark" reads data files (tasks.BENCHMARKS), "passkey" and "niah" (RULER's needle variants)
# are generated on a grid of prompt length x needle depth, "perplexity" scores documents. A new
# task joins a kind; a new kind needs a branch wherever `task_kind` is dispatched on, each of
# which refuses a kind it does not know (docs/extending.md, "A new evaluate task").
TASK_KINDS = {
    **dict.fromkeys(BENCHMARKS, "benchmark"),
    "passkey": "passkey",
    **dict.fromkeys(VARIANTS, "niah"),
    "perplexity": "perplexity",
}
TASKS = tuple(TASK_KINDS)
GRID_KINDS = ("passkey", "niah")  # the kinds scored on a grid of lengths and depths
GRID_TASKS = tuple(task for task, kind in TASK_KINDS.items() if kind in GRID_KINDS)
PREDICTIONS, RUN_SETTINGS = "predictions.jsonl", "run.json"


def task_kind(task: str) -> str:
    try:
        return TASK_KINDS[task]
    except KeyError:
        raise ValueError(
            f"task {task!r} has no kind: add it to TASK_KINDS (ahn_jax/evaluation/results.py)"
        ) from None


class UnknownKindError(ValueError):
    """A task kind one of evaluation's dispatches has no branch for."""

    def __init__(self, task: str, what: str):
        super().__init__(
            f"task {task!r} is of kind {task_kind(task)!r}, for which evaluation has no {what}: "
            "see docs/extending.md, A new evaluate task"
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """What determines the scores: a resumed run must match them (they go to run.json), but for
    what `check_settings` lets change."""

    task: str
    model: str
    ahn: str | None
    mode: str
    window: int
    sinks: int
    max_length: int | None
    max_new_tokens: int | None
    chat: bool
    dtype: str
    extra: dict  # task-specific: grid lengths/depths/samples/seed, niah needles, perplexity bucket
    decode: str = "exact"  # one of ahn_jax.model.cache.DECODES
    # the checkpoint's generation_config.json applies it to greedy decoding too, as HF `generate`
    repetition_penalty: float = 1.0
    # --data and --dataset (`data_record`): another file under a known name (ids are
    # "<file stem>:<line>") must not resume on the first one's results. None: generated prompts
    data: dict | None = None


# a pass-key or NIAH grid may grow or shrink on resume: each cell draws its samples from a seed
# of its own (passkey.grid_cells), so a cell's samples and ids do not depend on the others, and
# the summary covers this command's cells
RESIZABLE_GRID = ("lengths", "depths", "samples")


def check_settings(out: Path, settings: Settings) -> None:
    """Check that the run being resumed had the same settings (but a grid's shape), and write
    run.json with this command's."""
    path = out / RUN_SETTINGS
    current = json.loads(json.dumps(dataclasses.asdict(settings)))
    if path.exists():
        # a field added since that run was written held its default then
        defaults = {f.name: f.default for f in dataclasses.fields(Settings)
                    if f.default is not dataclasses.MISSING}  # fmt: skip
        written = _read_run_settings(path)
        before = {**json.loads(json.dumps(defaults)), **written}
        if before["mode"] == "full":  # older runs recorded a benchmark's W and S, unused
            before |= {"window": 0, "sinks": 0}
        # `data` file by file, below; not at all against a run.json written before it was (its
        # data are unknown, not "none")
        details = setting_changes.changes(before, current, ignore={"data"}, compared=_fixed)
        if "data" in written:
            details += _data_changes(before["data"], current["data"])
        if details:
            raise app.UsageError(
                f"{out} holds a run with other settings ({', '.join(details)}); use another "
                "--out or remove that directory"
            )
    if out.exists() and not out.is_dir():
        raise app.UsageError(f"--out {out} is a file: give the directory for the run's results")
    out.mkdir(parents=True, exist_ok=True)
    jsonl.write_whole(path, json.dumps(current, indent=2) + "\n")


def _read_run_settings(path: Path) -> dict:
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        written = e
    if not isinstance(written, dict):
        raise app.UsageError(
            f"{path} is not the settings of a run (a JSON object): use another --out, or remove "
            "that file to resume with this command's settings"
        )
    return written


def _data_changes(before: dict | None, current: dict | None) -> list[str]:
    """What makes the data of a resumed run another: a file of the same name with other bytes,
    or another --dataset. Files added or left out are not (sample ids carry the file's stem, and
    the summary covers this command's samples)."""
    before, current = before or {"files": {}}, current or {"files": {}}
    changes = [
        f"--data: {name} changed (its SHA-256 differs from the run's)"
        for name, digest in current["files"].items()
        if before["files"].get(name, digest) != digest
    ]
    if before.get("dataset") != current.get("dataset"):
        changes.append(f"--dataset: {before.get('dataset')!r} -> {current.get('dataset')!r}")
    return changes


def _fixed(value):
    """A setting as resuming compares it: the task's extras without the grid's shape."""
    if isinstance(value, dict) and "seed" in value:
        return {k: v for k, v in value.items() if k not in RESIZABLE_GRID}
    return value


def read_results(out: Path) -> list[dict]:
    """Scored records already in `out`, as a crash leaves them (`jsonl.read_appended`: a torn last
    line dropped, a missing last newline added). A damaged line before the last is the user's to
    fix (app.UsageError)."""
    path = out / PREDICTIONS
    if not path.exists():
        return []
    try:
        return [record for _, record in jsonl.read_appended(path)]
    except jsonl.InvalidJsonError as error:
        raise app.UsageError(
            f"{error}: the saved results are damaged there; delete that line (the same command "
            "then redoes its sample) or use another --out"
        ) from error


def scored_ids(out: Path, ids: Iterable[str]) -> set[str]:
    """Which of `ids` `out` has scored already (a resumed run's), said on stderr when any."""
    ids = set(ids)
    done = {r["id"] for r in read_results(out)} & ids
    if done:
        print(f"resuming: {len(done)} of {len(ids)} samples already scored in {out / PREDICTIONS}",
              file=sys.stderr)  # fmt: skip
    return done


def sort_results(out: Path, ids: Sequence[str]) -> None:
    """Rewrite predictions.jsonl with its records in the order of `ids` (the input order; batches
    finish in length order), atomically: a crash leaves the old or the new file whole."""
    order = {sample_id: i for i, sample_id in enumerate(ids)}
    records = sorted(read_results(out), key=lambda r: order.get(r["id"], len(order)))
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    jsonl.write_whole(out / PREDICTIONS, text)


def append_results(out: Path, records: Iterable[dict]) -> None:
    with open(out / PREDICTIONS, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def data_files(paths: Sequence[str], suffixes: Sequence[str] = (".jsonl",)) -> list[Path]:
    """The files of --data: files as given, directories' files with one of `suffixes`; a file
    named twice (also through its directory) once. Two files of one name are refused: sample ids
    ("<file stem>:<line>") and run.json's data record go by the name."""
    files = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())
            if not found:
                kinds = " or ".join(suffixes)
                raise app.UsageError(f"--data {path}: the directory has no {kinds} files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise app.UsageError(f"--data {path}: no such file or directory")
    if not files:
        raise app.UsageError("--data is required for this task")
    unique, by_stem = {}, {}
    for path in files:
        unique.setdefault(path.resolve(), path)  # the first mention of each file
    for path in unique.values():
        if (other := by_stem.setdefault(path.stem, path)) is not path:
            raise app.UsageError(
                f"--data has two files named {path.stem} ({other}, {path}): sample ids and the "
                "run's data record go by the file's name; evaluate them in separate runs"
            )
    return list(unique.values())


def data_record(files: Sequence[Path], dataset: str | None) -> dict:
    """What `Settings.data` holds: each data file's name and the SHA-256 of its bytes (a copy
    elsewhere resumes, an edited file does not), and the --dataset they are scored as."""
    return {"files": {path.name: file_digest(path) for path in files}, "dataset": dataset}


def nothing_to_evaluate(path: Path, skipped: int) -> str:
    """The error of a data file that gives no sample (`skipped`: its malformed lines)."""
    why = f"every record was skipped ({skipped}; see above)" if skipped else "it is empty"
    return f"--data {path}: nothing to evaluate: {why}"
