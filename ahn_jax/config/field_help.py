"""Every config field with its default and meaning, for `python -m ahn_jax.train --help`.

The meanings are the comments written beside the fields of the typed sections (ModelConfig,
TrainConfig, DataConfig), read from their source, so the help cannot drift from the code; a name
of a module constant in a comment ("one of LOSSES") is shown with its value.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize

from ahn_jax.config.model import ModelConfig
from ahn_jax.config.run import DataConfig, TrainConfig

# (section, class, {config-file name: the class's field name}); the `ahn` section's two fields are
# ModelConfig's, under other names
SECTIONS = (
    ("model", ModelConfig, None),
    ("ahn", ModelConfig, {"type": "ahn_type", "full_attention_layers": "full_attention_layers"}),
    ("train", TrainConfig, None),
    ("data", DataConfig, None),
)
HEADER = """\
config fields: a config file (configs/<name>.py) sets them, --config.<section>.<field>=<value>
overrides one (tuples as '("a.jsonl", "b.jsonl")'). Defaults are the paper's recipe; model fields
marked "required" come from the config file."""


def field_notes(cls) -> dict[str, str]:
    """Each field's comment: the one ending its line, else the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {}  # line number -> (comment text, whether it is the line's only content)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            own_line = not token.line[: token.start[1]].strip()
            comments[token.start[0]] = (token.string.lstrip("#").strip(), own_line)
    notes = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign):
            continue
        trailing = comments.get(node.end_lineno)
        if trailing and not trailing[1] and "fmt:" not in trailing[0]:
            notes[node.target.id] = trailing[0]
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        notes[node.target.id] = " ".join(above)
    return notes


def _with_constants(note: str, cls) -> str:
    """Names of the class module's constants (choices as tuples or dicts by key, numbers)
    followed by their values."""
    namespace = vars(sys.modules[cls.__module__])

    def value(match):
        name = match.group(0)
        found = namespace.get(name)
        if isinstance(found, dict):
            found = tuple(found)
        shown = isinstance(found, tuple | int | float) and not isinstance(found, bool)
        return f"{name} {found!r}" if shown else name

    return re.sub(r"\b[A-Z][A-Z_]{2,}\b", value, note)


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "required"


def describe(width: int = 100) -> str:
    """The help text: one entry per field, `section.field = default` and its meaning below."""
    lines = [HEADER]
    for section, cls, names in SECTIONS:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        notes = field_notes(cls)
        lines.append(f"\n{section}:")
        for name, attribute in (names or {n: n for n in fields}).items():
            if section == "model" and name in ("ahn_type", "full_attention_layers"):
                continue  # the `ahn` section's
            lines.append(f"  {section}.{name} = {_default(fields[attribute])}")
            note = _with_constants(notes[attribute], cls)
            lines += textwrap.wrap(note, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"
