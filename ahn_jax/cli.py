"""Shared command-line plumbing for the `python -m ahn_jax.<tool>` entry points.

`--config` is defined by the entry point being run (in its `__main__` block), never on import:
tools import each other's functions (the demo calls training), and a flag defined on import
would take the importing tool's place and default.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

# The flags defined here belong to the tool that calls the definition: absl's `--help` lists only
# the main module's flags (the others under --helpfull), so without this `--kernels` and
# `--config` would be missing from each tool's help.
flags.disclaim_key_flags()


def define_config_flag(default: str | None = None) -> None:
    """`--config`: an ml_collections config file, overridable as `--config.a.b=value`."""
    config_flags.DEFINE_config_file("config", default, "config file", lock_config=False)


def define_kernels_flag(choices) -> None:
    """`--kernels`: the model's kernels (`ModelConfig.kernels`, ahn_jax/model/kernel_choice.py),
    one of `choices` (config.KERNELS, passed in: this module imports nothing of ours)."""
    help_text = "prefill's kernels: auto (Pallas on TPU, XLA elsewhere), xla or pallas"
    flags.DEFINE_enum("kernels", "auto", list(choices), help_text)


def config():
    """The parsed `--config` (None when not given and no default). A path that is no file is a
    usage error naming it: ml_collections would only raise on the config's first use, an OSError
    ("Is a directory") under a traceback."""
    flag = flags.FLAGS["config"]
    if flag.value is None:
        return None
    path = Path(flag.config_filename.split(":", 1)[0])  # "file.py:args" parameterises get_config
    if not path.is_file():
        raise app.UsageError(_not_a_config_file(path))
    return flag.value


def _not_a_config_file(path: str | Path) -> str:
    what = "is a directory" if Path(path).is_dir() else "does not exist"
    return f"--config={path} {what}: --config takes a config file (configs/<name>.py)"


def check_directories(**paths: str | None) -> None:
    """A usage error naming the flag (`--name`) of each given path that is no directory."""
    _check_paths(paths, Path.is_dir, "is a file, not a directory")


def check_files(**paths: str | None) -> None:
    """A usage error naming the flag (`--name`) of each given path that is no file."""
    _check_paths(paths, Path.is_file, "is a directory, not a file")


def _check_paths(paths: dict, is_kind, other_kind: str) -> None:
    for name, path in paths.items():
        if path is not None and not is_kind(Path(path)):
            what = other_kind if Path(path).exists() else absent(path)
            raise app.UsageError(f"--{name}={path} {what}")


def absent(path: str | Path) -> str:
    """Why a path that is not there is not there: a Hugging Face hub id ("Qwen/Qwen2.5-3B") is
    no path, as users of transformers expect one to be."""
    hub_like = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(path))
    if hub_like and not Path(Path(path).parts[0]).exists():  # not a typo under a local folder
        return (
            "does not exist (ahn_jax reads local directories and downloads nothing: "
            f"`huggingface-cli download {path} --local-dir DIR`, then give DIR)"
        )
    return "does not exist"


# The folder of a training run's output_dir its weights are exported to, by train.objective
# (training/checkpointing.py): the AHN weights of a distillation, the whole pretrained base.
EXPORT_NAMES = {"distill": "ahn", "pretrain": "model"}


def training_run_note(path: str | Path) -> str:
    """ "" unless `path` is a training run of `ahn_jax.train`, its checkpoints folder or one
    step's checkpoint (trained weights with their optimizer state, which no tool reads as a
    model): then where the run's exported weights are, or how to export them. A rerun resumes
    from the run's latest step whichever step was given, so that is the step it names."""
    path = Path(path)
    run = path.parent.parent if _is_train_step(path) else path
    if not (run / "checkpoints").is_dir() and _train_steps(run):  # the checkpoints folder
        run = run.parent
    steps = _train_steps(run / "checkpoints")
    if not steps:
        return ""
    latest = steps[-1]
    # a step whose config cannot be read: the paper's objective
    objective = _objective(run / "checkpoints" / str(latest)) or "distill"
    exported = run / EXPORT_NAMES[objective]
    if not (exported / "config.json").is_file():
        where = (
            f"the run writes its weights to {exported} when it finishes; to export them at its "
            f"latest step, {latest}, run its training command again with "
            f"--config.train.steps={latest}"
        )
    elif objective == "distill":
        where = f"its exported AHN weights are {exported}: --ahn {exported} with the base --model"
    else:
        where = f"its exported model is {exported}"
    return f" (training checkpoints of ahn_jax.train, up to step {latest}: {where})"


def _train_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and _is_train_step(p))


def _is_train_step(path: Path) -> bool:
    return (path / "trainable").is_dir() and (path / "meta").is_dir()


def _objective(step: Path) -> str | None:
    """The saved config's train.objective (training/checkpointing.py writes it as `meta`)."""
    try:
        meta = json.loads((step / "meta" / "metadata").read_text())
        return meta["config"]["train"]["objective"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fail(error: Exception | str) -> NoReturn:
    """The tools' way out on a user's error: one line on stderr, exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes: what a resumed run compares its inputs by."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utf8_text(path: str | Path, flag: str) -> str:
    """A text file given by `flag` (e.g. "--data"), or a usage error naming the first byte that
    is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise app.UsageError(
            f"{flag} {path}: not UTF-8 text (byte {data[e.start]:#x} at offset {e.start})"
        ) from e


def exit_now(status: int) -> NoReturn:
    """Exit with `status` at once, output flushed: after Ctrl-C XLA's threads may still be
    compiling or running, and the interpreter's teardown under them segfaulted (about one
    interrupt in three early in an evaluation). Whatever the tool writes is closed by then (the
    interrupt unwound its `with` blocks)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not bring the teardown back
            stream.flush()
    os._exit(status)


def run(
    main, user_errors: tuple[type[Exception], ...] = (), *, on_interrupt: str = "interrupted"
) -> None:
    """`app.run(main)` for a tool: absl logging at WARNING unless --verbosity is given (Orbax logs
    ~150 INFO lines reading one checkpoint), and a usage error or one of `user_errors` (a missing
    file, a checkpoint that does not fit) printed as `error: <message>`, exit status 2, where
    absl would print the flags' help (50-90 lines) or Python a traceback. Ctrl-C prints
    `on_interrupt` (what the user can do next) and exits 130, as a shell's interrupted command."""

    started = False

    def checked(argv):
        nonlocal started
        started = True
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except (app.UsageError, *user_errors) as error:
            fail(error)
        except KeyboardInterrupt:
            print(on_interrupt, file=sys.stderr)
            exit_now(130)

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:  # a bad flag value ("--window=0"): absl's FATAL + exit 1
            fail(error)

    try:
        app.run(checked, flags_parser=parse)
    except (AttributeError, KeyError, ValueError) as error:
        if started:  # the tool's own failure: its traceback is the report
            raise
        # ml_collections applies `--config.a.b=value` while absl parses the command line, and
        # names a misspelt field there ("... Did you mean ...") under a traceback
        fail(f"a --config override{_override_named(error)}: {_plain(error)}")
    except OSError as error:
        if started:
            raise
        # an override makes ml_collections load the file while parsing: a missing or unreadable
        # one surfaces here, not in `config()`
        missing = re.search(r"No such file or directory: '([^']+)'", str(error))
        given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")]
        if missing and missing[1] in given:  # not a file the config itself opens
            fail(_not_a_config_file(missing[1]))
        fail(f"--config: {_plain(error)}")


def _override_named(error: Exception) -> str:
    """ " (--config.train.stepz=3)": the command-line override whose field the error names (""
    when none does), since ml_collections names the last key alone."""
    key = re.match(r"'?([A-Za-z_]\w*)", _plain(error))
    if key is None:
        return ""
    names = [a for a in sys.argv[1:] if a.startswith("--config.")]
    named = [a for a in names if a.split("=", 1)[0].endswith(f".{key[1]}")]
    return f" ({named[0]})" if named else ""


def _plain(error: Exception) -> str:
    """An exception's message on one line; ml_collections' is a quoted repr ("'\\'stepz\\'\\nDid
    you mean ..."), unquoted here."""
    text = str(error)
    with contextlib.suppress(ValueError, SyntaxError):
        text = str(ast.literal_eval(text))
    return " ".join(text.split())


def default_dtype() -> str:
    """The parameter dtype of `--dtype` when not given: bfloat16 where JAX runs on a TPU or GPU
    (as the paper evaluated), float32 on a CPU (whose bfloat16 matmuls are slow and rounder)."""
    import jax  # not at import: the entry point configures the platform first

    return "bfloat16" if jax.default_backend() in ("tpu", "gpu") else "float32"
