"""An evaluation's settings from what the command line gives, with each benchmark's reference
defaults (window, sinks, prompt budget, chat template), the other tasks' window and sinks from the
AHN weights' config.json, and each RULER variant's needle counts filled in."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from absl import app

from ahn_jax.checkpoints import recorded as recorded_lib
from ahn_jax.config import ModelConfig
from ahn_jax.evaluation import ruler, tasks
from ahn_jax.evaluation.results import GRID_KINDS, Settings, UnknownKindError, task_kind
from ahn_jax.inference import run_mode
from ahn_jax.inference.generation_config import read_generation_config


def resolve_settings(
    config: ModelConfig,
    task: str,
    *,
    model: str,
    ahn: str | None = None,
    mode: str | None = None,
    window: int | None = None,
    sinks: int | None = None,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    chat: str = "auto",
    model_name: str | None = None,
    dtype: str = "float32",
    lengths: Sequence[int | str] = (1024, 2048, 4096),
    depths: Sequence[float | str] = (0, 0.25, 0.5, 0.75, 1),
    samples: int = 5,
    seed: int = 0,
    bucket: int | None = None,
    decode: str = "exact",
    repetition_penalty: float | None = None,
    niah_keys: int | None = None,
    niah_values: int | None = None,
    niah_queries: int | None = None,
    niah_key_type: str | None = None,
    niah_value_type: str | None = None,
    niah_haystack: str | None = None,
    recorded: recorded_lib.Recorded = recorded_lib.NOTHING,
) -> Settings:
    """The settings of evaluating `model` (with `ahn`, whose config is `config`) on `task`; None
    means the default (W and S: `window_and_sinks`, `recorded` what the AHN config.json holds).
    The other arguments are the `ahn_jax.evaluate` flags; errors (app.UsageError) name them."""
    mode = run_mode.resolve_mode(mode, config, model)
    (window, sinks), _ = window_and_sinks(task, mode, window, sinks, recorded)
    max_length = max_length or getattr(tasks.BENCHMARKS.get(task), "max_length", None)
    run_mode.check_decode_flag(decode, mode)
    grid = dict(lengths=lengths, depths=depths, samples=samples, seed=seed)
    niah = dict(keys=niah_keys, values=niah_values, queries=niah_queries, key_type=niah_key_type,
                value_type=niah_value_type, haystack=niah_haystack)  # fmt: skip
    extra = _task_extras(task, max_length, grid, niah, bucket)
    return Settings(
        task=task,
        model=str(Path(model).resolve()),
        ahn=str(Path(ahn).resolve()) if ahn else None,
        mode=mode,
        window=window,
        sinks=sinks,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        chat=_uses_chat(task, model_name or Path(model).resolve().name, chat),
        dtype=dtype,
        extra=extra,
        decode=decode,
        repetition_penalty=_repetition_penalty(model, repetition_penalty),
    )


def _repetition_penalty(model: str, given: float | None) -> float:
    """--repetition_penalty, else the model's generation_config.json's, else 1 (none): the
    reference decodes greedily through HF `generate`, which applies the file's penalty."""
    if given is None:
        try:
            return read_generation_config(model).repetition_penalty
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    if not given > 0:
        raise app.UsageError(f"--repetition_penalty must be > 0, got {given}")
    return float(given)


def window_and_sinks(
    task: str, mode: str, window: int | None, sinks: int | None, recorded: recorded_lib.Recorded
) -> tuple[tuple[int, int], str]:
    """(W, S) and a note of where each came from: the flag (a window of 0 is none), else a
    benchmark's reference values (its scripts pass them whatever the checkpoint records), else
    for the other tasks what `recorded` holds, else no sinks and a usage error asking for
    --window. Mode full has none: (0, 0), and --window or --sinks given with it are refused
    (they would be recorded in run.json as if applied)."""
    if mode == "full":
        run_mode.check_no_window_for_full(window, sinks)
        return (0, 0), "no window or sinks (full attention)"
    benchmark = tasks.BENCHMARKS.get(task)
    if benchmark is not None:  # not `recorded`'s either: a benchmark's W and S are its own
        recorded, defaults_are = recorded_lib.NOTHING, f"the {task} reference's"
        defaults = {"window": benchmark.window, "sinks": benchmark.sinks}
    else:
        defaults, defaults_are = {"window": None, "sinks": 0}, "default"
    given = {"window": window or None, "sinks": sinks}
    chosen, note = recorded_lib.window_and_sinks(given, recorded, defaults, defaults_are)
    if chosen["window"] is None:
        raise app.UsageError(
            f"--task={task} --mode={mode} needs --window (no AHN config.json records one)"
        )
    return (chosen["window"], chosen["sinks"]), note


def chat_follows_model_name(task: str) -> bool:
    """Whether `--chat auto` decides by the model's name for this task (the benchmarks' rule;
    RULER runs a chat model with its chat template, so the NIAH variants take it too)."""
    return task_kind(task) in ("benchmark", "niah")


def _uses_chat(task: str, model_name: str, chat: str) -> bool:
    kind = task_kind(task)
    if chat_follows_model_name(task):
        return tasks.uses_chat(model_name, chat)
    if kind in ("passkey", "perplexity"):  # raw prompts unless asked (perplexity: never read)
        return kind == "passkey" and chat == "on"
    raise UnknownKindError(task, "chat-template rule")


def _task_extras(task, max_length, grid: dict, niah: dict, bucket) -> dict:
    """The settings only some tasks have: the pass-key and NIAH grid and seed, the NIAH needles
    (RULER's counts and kinds), perplexity's position bucket."""
    kind = task_kind(task)
    if kind in GRID_KINDS:
        extra = _grid(**grid)
        if kind == "niah":
            try:
                extra.update(dataclasses.asdict(ruler.make_config(task, **niah)))
            except ValueError as error:  # its message names the flag
                raise app.UsageError(str(error)) from None
        return extra
    if kind == "perplexity":
        if max_length is None or max_length < 2:
            raise app.UsageError("--task=perplexity needs --max_length (tokens per document) >= 2")
        return dict(bucket=bucket or max(max_length // 16, 1))
    if kind == "benchmark":
        return {}
    raise UnknownKindError(task, "extra settings")


def _grid(lengths, depths, samples: int, seed: int) -> dict:
    try:
        lengths = [int(x) for x in lengths]
    except ValueError:
        raise app.UsageError(f"--lengths must be token counts, got {lengths}") from None
    try:
        depths = [float(x) for x in depths]
    except ValueError:
        raise app.UsageError(f"--depths must be fractions in [0, 1], got {depths}") from None
    if not lengths or min(lengths) < 1:
        raise app.UsageError(f"--lengths must be positive token counts, got {lengths}")
    if not depths or not all(0.0 <= d <= 1.0 for d in depths):
        raise app.UsageError(f"--depths must lie in [0, 1], got {depths}")
    for name, values in (("lengths", lengths), ("depths", depths)):
        if len(set(values)) < len(values):  # each cell would be scored, and counted, twice
            raise app.UsageError(f"--{name} names a value twice: {values}")
    if samples < 1:
        raise app.UsageError(f"--samples must be at least 1, got {samples}")
    return dict(lengths=lengths, depths=depths, samples=samples, seed=seed)
