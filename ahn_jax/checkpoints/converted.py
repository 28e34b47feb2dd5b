"""Orbax checkpoints of model parameters, as written by `ahn_jax.convert`.

Layout of a converted checkpoint directory:
  params/                   Orbax (v1 API) pytree of our nested parameter dict
  config.json               the HF config the weights were converted from (verbatim)
  ahn_jax_checkpoint.json   marker: format version, stored parameter dtype and, when the
                            checkpoint holds AHN weights, their settings; written last
  tokenizer files           copied from the HF directory when present

Parameters are written one at a time with Orbax's partial save, and can be read one at a time
with partial load, so neither direction ever holds more than one parameter beyond its result.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from flax import traverse_util

from ahn_jax.checkpoints.safetensors_io import CheckpointFormatError
from ahn_jax.cli import training_run_note

PARAMS_DIR = "params"
MARKER_FILE = "ahn_jax_checkpoint.json"
FORMAT_VERSION = 1
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",  # where transformers >= 4.50 saves a tokenizer's chat template
    "chat_template.json",
)

ParamPath = tuple[str, ...]


def is_params_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / MARKER_FILE).is_file()


def save_params(
    directory: str | Path,
    pieces: Iterable[tuple[ParamPath, np.ndarray]],
    *,
    hf_config: Mapping[str, Any],
    param_dtype: str,
    side_files_from: str | Path | None = None,
    ahn: Mapping[str, Any] | None = None,
) -> None:
    """Write parameters given one (path, array) piece at a time; refuses to overwrite."""
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"output directory {directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    for path, array in pieces:
        ocp.partial.save(directory / PARAMS_DIR, traverse_util.unflatten_dict({path: array}))
    ocp.partial.finalize(directory / PARAMS_DIR)
    (directory / "config.json").write_text(json.dumps(dict(hf_config), indent=2))
    if side_files_from is not None:
        for name in SIDE_FILES:
            source = Path(side_files_from) / name
            if source.is_file():
                shutil.copy2(source, directory / name)
    # The marker goes last: a directory without it is an unfinished write, never read as valid.
    marker = {"format_version": FORMAT_VERSION, "param_dtype": param_dtype}
    if ahn is not None:  # the checkpoint also holds AHN weights (type, full-attention layers)
        marker["ahn"] = dict(ahn)
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2))


def read_marker(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MARKER_FILE
    if not path.is_file():
        if note := training_run_note(directory):
            raise FileNotFoundError(f"{directory} is not a converted checkpoint{note}")
        raise FileNotFoundError(
            f"{directory} is not an ahn_jax checkpoint (no {MARKER_FILE}); "
            "write one with: python -m ahn_jax.convert --hf_dir DIR --out CKPT"
        )
    try:
        marker = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"{path} is not valid JSON: {e}") from e
    if marker.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{path}: format_version {marker.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    return marker


def restore_param(directory: str | Path, path: ParamPath, target: jax.ShapeDtypeStruct):
    """One stored parameter, with the dtype and sharding of `target` (an Orbax partial load)."""
    directory = Path(directory).absolute()
    context = ocp.Context()
    context.pytree.loading.partial_load = True
    with context:
        tree = ocp.load(directory / PARAMS_DIR, traverse_util.unflatten_dict({path: target}))
    return traverse_util.flatten_dict(tree)[path]
