"""An evaluation's settings from what the command line gives, with each benchmark's reference
defaults (window, sinks, prompt budget, chat template) filled in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import app

from ahn_jax.config import ModelConfig
from ahn_jax.evaluation import tasks
from ahn_jax.evaluation.results import Settings


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
) -> Settings:
    """The settings of evaluating `model` (with `ahn`, whose config is `config`) on `task`; None
    (0 for window) means the benchmark's reference value. Each argument is the `ahn_jax.evaluate`
    flag of its name, and errors (app.UsageError) name the flag."""
    mode = mode or ("ahn" if config.ahn_type else "full")
    if mode == "ahn" and not config.ahn_type:
        raise app.UsageError(
            f"--mode=ahn needs AHN weights: {model} has none; pass --ahn DIR "
            "(or evaluate --mode=swa / full)"
        )
    benchmark = tasks.BENCHMARKS.get(task)
    window = window or (benchmark.window if benchmark else None)
    sinks = sinks if sinks is not None else (benchmark.sinks if benchmark else 0)
    if window is None:
        if mode != "full":
            raise app.UsageError(f"--task={task} --mode={mode} needs --window")
        window = 0
    max_length = max_length or (benchmark.max_length if benchmark else None)
    extra = _task_extras(task, max_length, lengths, depths, samples, seed, bucket)
    model_name = model_name or Path(model).resolve().name
    use_chat = task in tasks.BENCHMARKS and tasks.uses_chat(model_name, chat)
    use_chat = use_chat or (task == "passkey" and chat == "on")
    return Settings(
        task=task,
        model=str(Path(model).resolve()),
        ahn=str(Path(ahn).resolve()) if ahn else None,
        mode=mode,
        window=window,
        sinks=sinks,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        chat=use_chat,
        dtype=dtype,
        extra=extra,
    )


def _task_extras(task, max_length, lengths, depths, samples, seed, bucket) -> dict:
    """The settings only one task has: passkey's grid and seed, perplexity's position bucket."""
    if task == "passkey":
        return dict(
            lengths=[int(x) for x in lengths],
            depths=[float(x) for x in depths],
            samples=samples,
            seed=seed,
        )
    if task == "perplexity":
        if max_length is None or max_length < 2:
            raise app.UsageError("--task=perplexity needs --max_length (tokens per document) >= 2")
        return dict(bucket=bucket or max(max_length // 16, 1))
    return {}
