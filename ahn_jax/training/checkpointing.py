"""Training checkpoints (Orbax: AHN weights, optimizer state, each process's data iterator, the
step and the config) and the exports written at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from ahn_jax.checkpoints import ahn_weights
from ahn_jax.checkpoints.pretrained import save_model

if TYPE_CHECKING:  # the run imports this module to restore its latest checkpoint
    from ahn_jax.training.run import Run


def save(run: Run, step: int) -> None:
    run.manager.save(
        step,
        args=ocp.args.Composite(
            trainable=ocp.args.StandardSave(run.trainable),
            opt_state=ocp.args.StandardSave(run.opt_state),
            data=grain.checkpoint.CheckpointSave(run.iterator),  # one file per process
            meta=ocp.args.JsonSave({"step": step, "config": json.loads(run.config.to_json())}),
        ),
    )


def restore_latest(run: Run) -> None:
    step = run.manager.latest_step()
    if step is None:
        return

    def abstract(tree):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )

    restored = run.manager.restore(
        step,
        args=ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract(run.trainable)),
            opt_state=ocp.args.StandardRestore(abstract(run.opt_state)),
            data=grain.checkpoint.CheckpointRestore(run.iterator),
            meta=ocp.args.JsonRestore(),
        ),
    )
    run.trainable, run.opt_state = restored.trainable, restored.opt_state
    run.start_step = step
    logging.info("resumed from %s at step %d", run.manager.directory, step)


def export_ahn(run: Run) -> Path:
    """The AHN weights in the reference's layout, written by process 0."""
    export_dir = run.output_dir / "ahn"
    gathered = multihost_utils.process_allgather(run.trainable, tiled=True)  # a collective
    if jax.process_index() == 0 and not export_dir.exists():
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(gathered))
        params = {path: np.asarray(value) for path, value in flat.items()}
        t = run.train
        # the inference W and S config.json records: the one pair a "fixed" run trained on; else
        # the evaluation defaults (docs/method.md §Inference), TrainConfig having no such field
        window, sinks = (
            (t.window, t.sinks)
            if t.window_sampling == "fixed"
            else (ahn_weights.DEFAULT_WINDOW, ahn_weights.DEFAULT_SINKS)
        )
        ahn_weights.save_ahn_weights(
            export_dir, run.model_config, params, window=window, sinks=sinks, loss=t.loss
        )
    return export_dir


def export_model(run: Run) -> Path:
    """The pretrained base as a checkpoint `from_pretrained` (and `train.base_checkpoint`) reads."""
    export_dir = run.output_dir / "model"
    gathered = multihost_utils.process_allgather(run.trainable, tiled=True)  # a collective
    if jax.process_index() == 0 and not export_dir.exists():
        save_model(nnx.merge(run.graphdef, gathered, run.frozen), export_dir)
    return export_dir
