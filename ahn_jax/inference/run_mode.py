"""An inference run's attention mode and decode as `generate` and `evaluate` take them from their
flags: the mode (default: ahn with AHN weights, else full) and the decode it allows. Errors are
usage errors naming the flag. (W and S: `checkpoints.recorded`.)"""

from __future__ import annotations

from absl import app

from ahn_jax.config import ModelConfig
from ahn_jax.model.cache import check_decode


def resolve_mode(mode: str | None, config: ModelConfig, model_dir) -> str:
    """--mode, else ahn where the model has AHN weights and full where not; ahn without them is a
    usage error."""
    mode = mode or ("ahn" if config.ahn_type else "full")
    if mode == "ahn" and not config.ahn_type:
        raise app.UsageError(
            f"--mode=ahn needs AHN weights: {model_dir} has none; pass --ahn DIR "
            "(or --mode=swa / full)"
        )
    return mode


def check_decode_flag(decode: str, mode: str) -> None:
    """`model.cache.check_decode` as a usage error naming --decode."""
    try:
        check_decode(decode, mode)
    except ValueError as error:
        raise app.UsageError(f"--decode: {error}") from None


def check_no_window_for_full(window: int | None, sinks: int | None) -> None:
    """--window or --sinks with --mode full is a usage error: full attention keeps every token,
    so they would change nothing while the run reports them (a window of 0 and no sinks pass)."""
    if window or sinks:
        raise app.UsageError(
            "--window and --sinks do not apply to mode full (it attends every token; the "
            "default without AHN weights): leave them out, or pass --mode swa / ahn"
        )


def attended(prompt_tokens: int, new_tokens: int) -> int:
    """Tokens a sequence attends: its prompt and new tokens but the last, which is chosen and
    never attended."""
    return prompt_tokens + new_tokens - 1


def window_unused(mode: str, decode: str, attended_tokens: int, window: int, sinks: int) -> bool:
    """Whether a sequence attending `attended_tokens` leaves no token out of S + W in `mode`, so
    that its output is full attention's (mode "full" always is; the reference's decode drops cache
    index 128 at every step, evicted or not, so it never is)."""
    return mode != "full" and decode != "reference" and attended_tokens <= sinks + window
