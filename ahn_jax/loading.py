"""`from_pretrained`: an HF checkpoint directory or a converted Orbax checkpoint -> Qwen2Model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from tqdm import tqdm

from ahn_jax import checkpoint, hf_naming, safetensors_io
from ahn_jax.config import ModelConfig, from_hf_config, read_hf_config
from ahn_jax.model import Qwen2Model, abstract_model
from ahn_jax.sharding import DEFAULT_RULES, state_shardings


def param_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    _, state = nnx.split(abstract_model(config))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def load_hf_params(directory: str | Path, config: ModelConfig) -> dict[str, Any]:
    """Our nested parameter dict (numpy, `config.param_dtype`) from HF safetensors, streamed.

    Each tensor is read, transposed and cast on its own, so peak memory is one copy of the weights
    in the target dtype plus the largest single tensor.
    """
    shapes = param_shapes(config)
    maps = hf_naming.tensor_maps(config, shapes)
    infos = safetensors_io.tensor_index(directory)
    hf_naming.check_fits(
        maps,
        {name: info.shape for name, info in infos.items()},
        tied=config.tie_word_embeddings,
        source=str(directory),
    )
    dtype = np.dtype(config.jnp_param_dtype)
    arrays = {path: np.empty(shape, dtype) for path, shape in shapes.items()}
    by_name = {m.hf_name: m for m in maps}
    wanted = [infos[name] for name in by_name]
    for name, tensor in tqdm(
        safetensors_io.iter_tensors(wanted), total=len(wanted), desc="loading", disable=None
    ):
        target = by_name[name]
        value = target.to_ours(tensor)
        if target.layer is None:
            arrays[target.path][...] = value
        else:
            arrays[target.path][target.layer] = value
    return traverse_util.unflatten_dict(arrays)


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def from_pretrained(
    path: str | Path,
    *,
    dtype=jnp.float32,
    compute_dtype=None,
    remat_policy: str = "none",
    mesh: jax.sharding.Mesh | None = None,
    rules=DEFAULT_RULES,
) -> Qwen2Model:
    """Load a Qwen2/Qwen2.5 model from an HF directory or an Orbax checkpoint of `convert`.

    `dtype` is the parameter dtype, `compute_dtype` that of activations (defaults to `dtype`).
    With `mesh`, parameters are placed sharded by the logical-axis `rules` as they load.
    """
    path = Path(path)
    config = from_hf_config(
        read_hf_config(path),
        param_dtype=_dtype_name(dtype),
        dtype=_dtype_name(compute_dtype if compute_dtype is not None else dtype),
        remat_policy=remat_policy,
    )
    graphdef, abstract_state = nnx.split(abstract_model(config))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(abstract_state))
    else:
        shardings = nnx.to_pure_dict(state_shardings(abstract_state, mesh, rules))
    if checkpoint.is_params_checkpoint(path):
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            nnx.to_pure_dict(abstract_state),
            shardings,
        )
        params = checkpoint.restore_params(path, target)
    else:
        params = jax.device_put(load_hf_params(path, config), shardings)
    nnx.replace_by_pure_dict(abstract_state, params)
    return nnx.merge(graphdef, abstract_state)
