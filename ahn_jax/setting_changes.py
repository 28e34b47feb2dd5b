"""What differs between the settings a run recorded and this command's, in the one wording that
resume refusals and notes print ("name: before -> now"): training's checkpoint config, evaluate's
run.json and generate's `.partial` file."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from flax import traverse_util

UNSET = "(unset)"  # a setting only one side records


def flat(settings: Mapping) -> dict:
    """Nested settings by dotted name: {"generation": {"top_k": 5}} -> {"generation.top_k": 5}."""
    return traverse_util.flatten_dict(dict(settings), sep=".")


def changes(
    before: Mapping,
    now: Mapping,
    *,
    ignore: Collection[str] = (),
    compared: Callable[[Any], Any] = lambda value: value,
) -> list[str]:
    """ "name: before -> now" for each name whose values differ (as `compared` sees them), in name
    order, `ignore` aside. A name only one side records shows as (unset) on the other, and counts
    as None there: a setting recorded as None by an older run, since removed, is no change."""

    def shown(settings: Mapping, name: str) -> str:
        return repr(settings[name]) if name in settings else UNSET

    names = sorted((set(before) | set(now)) - set(ignore))
    return [
        f"{name}: {shown(before, name)} -> {shown(now, name)}"
        for name in names
        if compared(before.get(name)) != compared(now.get(name))
    ]
