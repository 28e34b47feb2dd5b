"""The inference window W and sinks S that an AHN config.json records (`sliding_window`,
`num_attn_sinks`: the reference builds its inference model from that config, so its W and S are the
file's), and the rule every tool resolves them by: a flag, else the file, else a default."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from ahn_jax.checkpoints.ahn_weights import read_ahn_settings
from ahn_jax.checkpoints.pretrained import records_ahn

NAMES = ("window", "sinks")


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What an AHN config.json records: `values` has "window" and "sinks" where the file has them
    (the released checkpoints carry no num_attn_sinks); `source` is the file, None without one."""

    values: Mapping[str, int] = dataclasses.field(default_factory=dict)
    source: Path | None = None
    # how the weights were trained (`sliding_window_type`): with "random" or "linear" windows the
    # file's W and S are an inference choice made at export, not the window the weights learned
    window_sampling: str = "fixed"


NOTHING = Recorded()


def recorded_attention(model_dir: str | Path, ahn_dir: str | Path | None) -> Recorded:
    """The W and S recorded beside the AHN weights a model loads: `ahn_dir`'s config.json, else
    `model_dir`'s when it is an AHN config (a merged directory of base and AHN tensors, or an
    Orbax checkpoint converted from one); NOTHING for a plain base."""
    source = ahn_dir if ahn_dir is not None else (model_dir if records_ahn(model_dir) else None)
    if source is None:
        return NOTHING
    found = read_ahn_settings(source)
    values = {name: found[name] for name in NAMES if found[name] is not None}
    return Recorded(values, Path(source) / "config.json", found["window_sampling"])


def window_and_sinks(
    given: Mapping[str, int | None],
    recorded: Recorded,
    defaults: Mapping[str, int | None],
    defaults_are: str = "default",
) -> tuple[dict[str, int | None], str]:
    """W and S, each `given` (a flag; None: not given), else `recorded`, else `defaults`; and a
    note of where each came from, as "window 32 (<source>), sinks 128 (<defaults_are>)", or
    "window 32, sinks 4 (<source>)" when both came from one place."""
    chosen, origins = {}, []
    for name in NAMES:
        if given[name] is not None:
            chosen[name], origin = given[name], f"--{name}"
        elif name in recorded.values:
            chosen[name], origin = recorded.values[name], str(recorded.source)
            if recorded.window_sampling != "fixed":
                origin += f", which records weights trained on {recorded.window_sampling} windows"
        else:
            chosen[name], origin = defaults[name], defaults_are
        origins.append(origin)
    window, sinks = f"window {chosen['window']}", f"sinks {chosen['sinks']}"
    if origins[0] == origins[1]:
        return chosen, f"{window}, {sinks} ({origins[0]})"
    return chosen, f"{window} ({origins[0]}), {sinks} ({origins[1]})"
