"""Training checkpoints (Orbax: AHN weights, optimizer state, each process's data iterator, the
step and the config) and the exports written at the end of a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from ahn_jax import setting_changes
from ahn_jax.checkpoints import ahn_weights
from ahn_jax.checkpoints.pretrained import save_model
from ahn_jax.cli import EXPORT_NAMES
from ahn_jax.config import ConfigError, TrainConfig
from ahn_jax.config.windows import fixed_window
from ahn_jax.training import data_files
from ahn_jax.training.optimizer import rate_change_on_resume

if TYPE_CHECKING:  # the run imports this module to restore its latest checkpoint
    from ahn_jax.training.run import Run


def save(run: Run, step: int) -> None:
    run.manager.save(
        step,
        args=ocp.args.Composite(
            trainable=ocp.args.StandardSave(run.trainable),
            opt_state=ocp.args.StandardSave(run.opt_state),
            data=grain.checkpoint.CheckpointSave(run.iterator),  # one file per process
            meta=ocp.args.JsonSave({"step": step, "config": _as_json(run.config),
                                    "data_files": run.data_fingerprints}),
        ),
    )  # fmt: skip


def restore_latest(run: Run) -> None:
    step = run.manager.latest_step()
    if step is None:
        return

    def abstract(tree):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )

    # the saved config first: a checkpoint of another model or optimizer does not fit this run's
    # trees, and the restore's error (a list of every mismatched leaf) would not say which setting
    saved = run.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    run.changed_settings = changed_settings(saved.meta["config"], _as_json(run.config))
    _check_data_files(saved.meta.get("data_files"), run, step)
    run.rate_change = rate_change_on_resume(saved.meta["config"].get("train", {}), run.train, step)
    _check_process_count(run.manager.directory / str(step) / "data", step)
    try:
        restored = run.manager.restore(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(abstract(run.trainable)),
                opt_state=ocp.args.StandardRestore(abstract(run.opt_state)),
                data=grain.checkpoint.CheckpointRestore(run.iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except ValueError as err:
        # what decides the saved trees (the weights', the optimizer state's, the data iterator's)
        if not any(c.startswith(TREE_SETTINGS) for c in run.changed_settings):
            raise
        orbax_says = str(err).splitlines()[0].rstrip(":")
        raise ConfigError(
            f"train.output_dir {run.output_dir} holds the checkpoint of step {step} of another "
            f"run, which this config's model, optimizer or data do not fit (changed since the "
            f"checkpoint: {'; '.join(run.changed_settings)}). Resume with the checkpoint's "
            f"settings, or set a new train.output_dir. Orbax: {orbax_says}"
        ) from err
    run.trainable, run.opt_state = restored.trainable, restored.opt_state
    run.start_step = step
    logging.info("resumed from %s at step %d", run.manager.directory, step)


def _check_data_files(saved: list[str] | None, run: Run, step: int) -> None:
    if changed := data_files.changed_files(saved, run.data_fingerprints, run.data.paths):
        raise ConfigError(
            f"train.output_dir {run.output_dir} holds the checkpoint of step {step}, whose data "
            f"files differ from these: {', '.join(changed)} (size, first / last MiB). Resumed, "
            "its data order would not continue (a record added or removed moves every later "
            "one). Resume with the files as they were, or set a new train.output_dir"
        )


def _check_process_count(data_dir: Path, step: int) -> None:
    """The data iterators' positions are saved one file per process (`process_<i>-of-<n>.json`):
    a run on another number of hosts cannot take them up (grain names a missing file)."""
    saved = {f.name.removesuffix(".json").rsplit("-of-", 1)[1]
             for f in data_dir.glob("process_*-of-*.json")}  # fmt: skip
    if saved and saved != {str(jax.process_count())}:
        raise ConfigError(
            f"the checkpoint of step {step} in {data_dir.parent.parent} was written by "
            f"{', '.join(sorted(saved))} processes and this run has {jax.process_count()}: each "
            "process's position in the data is saved on its own, so the run resumes on as many "
            "hosts as it was saved from (the weights and optimizer state fit any mesh)"
        )


def _as_json(config) -> dict:
    return json.loads(config.to_json())


# the settings whose change can make a checkpoint's trees another shape than this run's
TREE_SETTINGS = ("model.", "ahn.", "data.", "train.objective:")

# where the run is, not how it trains: a run directory may be moved or copied
NOT_COMPARED = ("train.output_dir",)


def changed_settings(saved: dict, now: dict) -> list[str]:
    """The settings that differ between a checkpoint's config and the resuming run's, as
    "section.field: saved -> now" (fields only one side has included), NOT_COMPARED aside."""
    return setting_changes.changes(
        setting_changes.flat(saved), setting_changes.flat(now), ignore=NOT_COMPARED
    )


def export_attention(t: TrainConfig) -> tuple[int, int]:
    """The inference W and S the AHN export's config.json records: the one pair the run trained
    on ("fixed", or one W + S and one S choice: `config.windows.fixed_window`, which `costs`
    reads too); else the evaluation defaults (docs/method.md §Inference), TrainConfig having no
    such field (the file's `sliding_window_type` says the windows were drawn)."""
    if trained_on := fixed_window(t):
        return trained_on[0], trained_on[1]
    return ahn_weights.DEFAULT_WINDOW, ahn_weights.DEFAULT_SINKS


def export_ahn(run: Run) -> Path:
    """The AHN weights in the reference's layout, written by process 0 (`_export`)."""
    t = run.train
    window, sinks = export_attention(t)

    def write(gathered, directory: Path) -> None:
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(gathered))
        params = {path: np.asarray(value) for path, value in flat.items()}
        ahn_weights.save_ahn_weights(
            directory,
            run.model_config,
            params,
            window=window,
            sinks=sinks,
            loss=t.loss,
            window_sampling=t.window_sampling,
        )

    return _export(run, run.output_dir / EXPORT_NAMES["distill"], write)


def export_model(run: Run) -> Path:
    """The pretrained base as a checkpoint `from_pretrained` (and `train.base_checkpoint`) reads
    (`_export`)."""

    def write(gathered, directory: Path) -> None:
        save_model(nnx.merge(run.graphdef, gathered, run.frozen), directory)

    return _export(run, run.output_dir / EXPORT_NAMES["pretrain"], write)


def _export(run: Run, export_dir: Path, write) -> Path:
    """`write(trained weights, directory)` by process 0 into `export_dir`, unless the export is
    there and this invocation trained no step (a finished run started again). A run that trained
    on (more steps) replaces it: the new export is written beside it and swapped in once
    complete, so a crash while writing leaves the old one whole."""
    gathered = multihost_utils.process_allgather(run.trainable, tiled=True)  # a collective
    trained = run.start_step < run.train.steps
    if jax.process_index() == 0 and (trained or not export_dir.exists()):
        partial = export_dir.with_name(export_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write(gathered, partial)
        shutil.rmtree(export_dir, ignore_errors=True)
        partial.rename(export_dir)
    return export_dir
