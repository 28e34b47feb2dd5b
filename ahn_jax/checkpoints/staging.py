"""Output directories written whole or not at all, for every `python -m ahn_jax.convert` mode.

A conversion writes into a hidden sibling, `.<name>.partial-<host>-<pid>`, and renames it to the
output only once everything (shards, index, config.json, side files) is in it: one rename on one
filesystem, so an interrupted run (Ctrl-C, an exception, SIGKILL, a full disk) never leaves a
half-written output that a rerun refuses as "not empty" or, worse, that a reader takes for a
checkpoint. An exception or KeyboardInterrupt removes the sibling; one a killed process left is
removed by the next run on the same host (its pid no longer runs), and never blocks it meanwhile.
An output directory that already exists (empty; `--out .`) is kept: the staging directory is made
inside it and its entries moved out one by one at the end, config.json and the marker last, so an
interruption there leaves a directory that reads as unfinished.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from ahn_jax.checkpoints.converted import MARKER_FILE

# `.partial-<host>-<pid>`: the host, because on a filesystem shared by several hosts (a TPU pod's
# NFS) a pid says whether its writer still runs only on the host that wrote it
_STAGED = re.compile(r"\.partial-(?P<host>.+)-(?P<pid>\d+)$")


def _tag() -> str:
    return f".partial-{socket.gethostname()}-{os.getpid()}"


def _is_staging(name: str) -> bool:
    return name.startswith(".") and _STAGED.search(name) is not None


def require_empty(*directories: str | Path) -> None:
    """Each directory is new or empty (staging directories a killed run left inside one do not
    count): what convert writes into."""
    for directory in map(Path, directories):
        if not directory.is_dir():
            continue
        if any(not _is_staging(entry.name) for entry in directory.iterdir()):
            unfinished = not (directory / "config.json").is_file()
            hint = (
                " (it has no config.json: if an interrupted conversion left it, remove it and "
                "run again)"
                if unfinished
                else ""
            )
            raise FileExistsError(
                f"output directory {directory} exists and is not empty{hint}: give a new or "
                "empty directory"
            )


def _writer_gone(match: re.Match) -> bool:
    """Whether the process that named a staging directory no longer runs: on this host only; our
    own pid is a previous process's (containers reuse pids), as this one has not staged yet."""
    if match["host"] != socket.gethostname():
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # runs, as another user
        return False
    return False


def _remove_stale(out: Path) -> None:
    """Staging directories of `out` whose writer was killed: they hold a whole model's bytes."""
    candidates = list(out.parent.glob(f".{glob.escape(out.name)}.partial-*"))
    if out.is_dir():
        candidates += list(out.glob(".partial-*"))
    for path in candidates:
        match = _STAGED.search(path.name)
        if match and path.is_dir() and _writer_gone(match):
            shutil.rmtree(path, ignore_errors=True)


def _staging_dir(out: Path) -> Path:
    """A sibling of `out`, renamed onto it at the end; inside `out` when that is an existing
    (empty) directory, whose entries then move in one by one: renaming a sibling onto it would
    replace the directory itself (`--out .` would leave the shell in a deleted directory, a
    mount point could not be renamed onto, and its mode, owner and ACLs would be lost)."""
    if out.is_dir():
        return out / _tag()
    return out.parent / f".{out.name}{_tag()}"


def _publish(staging: Path, out: Path) -> None:
    if staging.parent == out:  # inside `out` (`_staging_dir`): a rename per entry, the one case
        # not atomic as a whole; what says a directory is finished moves last, so that an
        # interruption here leaves one that reads as unfinished (`require_empty`, read_marker)
        last = ("config.json", MARKER_FILE)
        for entry in sorted(staging.iterdir(), key=lambda e: (e.name in last, e.name == last[1])):
            entry.rename(out / entry.name)
        staging.rmdir()
        return
    try:
        os.rename(staging, out)  # replaces `out` when it is an empty directory
    except OSError as e:
        if out.is_dir() and any(out.iterdir()):
            raise FileExistsError(
                f"output directory {out} was written by another process meanwhile"
            ) from e
        raise


@contextlib.contextmanager
def staged(*outs: str | Path) -> Iterator[tuple[Path, ...]]:
    """Empty staging directories, one per output directory in `outs`, to write into; renamed to
    the outputs when the block ends, all of them or (an exception, KeyboardInterrupt included)
    none: the staging directories are removed and the exception goes on."""
    require_empty(*outs)
    targets = [Path(out).resolve() for out in outs]  # "." and symlinks: the directory itself
    existed = {out for out in targets if out.is_dir()}
    stagings: list[Path] = []
    published: list[Path] = []
    try:
        for out in targets:
            out.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(out)
            stagings.append(_staging_dir(out))
            stagings[-1].mkdir()
        yield tuple(stagings)
        for staging, out in zip(stagings, targets, strict=True):
            _publish(staging, out)
            published.append(out)
    except BaseException:
        for path in stagings:
            shutil.rmtree(path, ignore_errors=True)
        for out in published:  # one of several outputs alone is not a whole result
            for entry in out.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            if out not in existed:
                out.rmdir()
        raise
