"""Checks of a config section's fields by their annotations, each error naming the field
(`train.steps must be a positive integer, got '10'`): what the typed sections of run.py share."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping
from typing import Any

from ahn_jax.config.model import ConfigError


def known(cls, section: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        listed = ", ".join(f"{section}.{name}" for name in unknown)
        raise ConfigError(f"unknown setting(s) {listed}; {section} allows: {sorted(names)}")
    return dict(settings)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_sequence(value, item_ok) -> bool:
    return isinstance(value, list | tuple) and all(item_ok(x) for x in value)


# Field annotation -> (what a value must be, the test, the conversion to the field's type).
_KINDS = {
    "int": ("an integer", _is_int, int),
    "float": ("a number", _is_number, float),
    "str": ("a string", lambda v: isinstance(v, str), str),
    "bool": ("True or False", lambda v: isinstance(v, bool), bool),
    "tuple[int, ...]": (
        "a sequence of integers",
        lambda v: _is_sequence(v, _is_int),
        lambda v: tuple(int(x) for x in v),
    ),
    "tuple[float, ...]": (
        "a sequence of numbers",
        lambda v: _is_sequence(v, _is_number),
        lambda v: tuple(float(x) for x in v),
    ),
    "tuple[str, ...]": (
        "a sequence of strings",
        lambda v: _is_sequence(v, lambda x: isinstance(x, str | os.PathLike)),
        lambda v: tuple(os.fspath(x) for x in v),
    ),
    "dict[str, Any]": ("a mapping", lambda v: isinstance(v, Mapping), dict),
}


def check_fields(config, section: str, positive: tuple[str, ...] = ()) -> None:
    """Each field's value has the field's type (converted to it: a list becomes a tuple, an int
    a float); the `positive` ones are integers >= 1."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        what, ok, convert = _KINDS[field.type]
        if field.name in positive:
            what, ok = "a positive integer", (lambda v: _is_int(v) and v >= 1)
        if not ok(value):
            raise ConfigError(f"{section}.{field.name} must be {what}, got {value!r}")
        object.__setattr__(config, field.name, convert(value))


def check_choice(section: str, name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name} must be one of {allowed}, got {value!r}")


def check_local_paths(section: str, **paths: str | tuple[str, ...]) -> None:
    """Paths are read with the local filesystem: a URL (gs://, s3://) would be taken for a relative
    directory named "gs:" (an output directory) or not found (inputs). Buckets are mounted instead
    (gcsfuse; launch/tpu_vm_pod.sh mount)."""
    for name, value in paths.items():
        for path in (value,) if isinstance(value, str) else value:
            if "://" in path:
                raise ConfigError(
                    f"{section}.{name} = {path!r}: URLs are not read directly; mount the bucket "
                    "(gcsfuse: launch/README.md) and give the path under the mount, e.g. "
                    "/gcs/<bucket>/..."
                )
