"""Orbax checkpoints of model parameters, as written by `ahn_jax.convert`.

Layout of a converted checkpoint directory:
  params/               orbax StandardCheckpointer tree (our nested parameter dict)
  config.json           the HF config the weights were converted from (verbatim)
  ahn_jax_checkpoint.json   marker: format version and the stored parameter dtype
  tokenizer files       copied from the HF directory when present
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

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
)


def is_params_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / MARKER_FILE).is_file()


def save_params(
    directory: str | Path,
    params: Mapping[str, Any],
    *,
    hf_config: Mapping[str, Any],
    param_dtype: str,
    side_files_from: str | Path | None = None,
) -> None:
    """Write a parameter tree (numpy or jax leaves) with its HF config; refuses to overwrite."""
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"output directory {directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, dict(params))
        checkpointer.wait_until_finished()
    (directory / "config.json").write_text(json.dumps(dict(hf_config), indent=2))
    if side_files_from is not None:
        for name in SIDE_FILES:
            source = Path(side_files_from) / name
            if source.is_file():
                shutil.copy2(source, directory / name)
    # The marker goes last: a directory without it is an unfinished write, never read as valid.
    marker = {"format_version": FORMAT_VERSION, "param_dtype": param_dtype}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2))


def read_marker(directory: str | Path) -> dict[str, Any]:
    marker = json.loads((Path(directory) / MARKER_FILE).read_text())
    if marker.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory}/{MARKER_FILE}: format_version {marker.get('format_version')!r} is not "
            f"supported (expected {FORMAT_VERSION})"
        )
    return marker


def restore_params(directory: str | Path, abstract_params: Mapping[str, Any]) -> dict[str, Any]:
    """Restore onto `abstract_params`: ShapeDtypeStruct leaves whose dtype and sharding are used."""
    directory = Path(directory).absolute()
    read_marker(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory / PARAMS_DIR, dict(abstract_params))
