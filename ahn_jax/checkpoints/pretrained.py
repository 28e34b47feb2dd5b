"""`from_pretrained`: an HF checkpoint directory (base or merged with AHN weights) or a converted
Orbax checkpoint -> AhnModel."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from tqdm import tqdm

from ahn_jax.checkpoints import ahn_weights, converted, hf_naming, safetensors_io
from ahn_jax.checkpoints.converted import ParamPath
from ahn_jax.checkpoints.hf_config import from_hf_config, read_hf_config, to_hf_config
from ahn_jax.config import ConfigError, ModelConfig
from ahn_jax.model import memory
from ahn_jax.model.sharding import DEFAULT_RULES, state_shardings
from ahn_jax.model.transformer import AhnModel, abstract_model

# What loading a user's directories can raise that is the user's to fix: a missing or unreadable
# file, a config it cannot run, tensors that do not fit (the tools print it as one error line)
LOAD_ERRORS = (
    OSError,
    ConfigError,
    hf_naming.CheckpointMismatchError,
    safetensors_io.CheckpointFormatError,
)


def param_shapes(config: ModelConfig) -> dict[ParamPath, tuple[int, ...]]:
    _, state = nnx.split(abstract_model(config))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def iter_hf_params(
    directory: str | Path, config: ModelConfig, *, skip_ahn: bool = False
) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """Our base parameters (numpy, `config.param_dtype`) from HF safetensors, one at a time.

    The checkpoint is checked against the config before anything is read; `skip_ahn` leaves out
    the AHN tensors of a merged checkpoint (`ahn_weights.load_ahn_weights` reads those). Each
    parameter is assembled from its tensors (one per layer for stacked weights) and handed over
    before the next is read, so a consumer that stores or writes each piece never needs two copies.
    """
    shapes = param_shapes(config)
    maps = hf_naming.tensor_maps(config, shapes)
    infos = safetensors_io.tensor_index(directory)
    if skip_ahn:
        infos = {n: info for n, info in infos.items() if not ahn_weights.is_ahn_tensor(n)}
    hf_naming.check_fits(
        maps,
        {name: info.shape for name, info in infos.items()},
        tied=config.tie_word_embeddings,
        source=str(directory),
    )
    dtype = np.dtype(config.jnp_param_dtype)
    by_path: dict[ParamPath, list[hf_naming.TensorMap]] = {}
    for m in maps:
        by_path.setdefault(m.path, []).append(m)
    with tqdm(total=len(maps), desc=f"reading {Path(directory).name}", disable=None) as bar:
        for path, path_maps in by_path.items():
            array = np.empty(shapes[path], dtype)
            for m in sorted(path_maps, key=lambda m: (str(infos[m.hf_name].file), m.hf_name)):
                value = m.to_ours(safetensors_io.read_tensor(infos[m.hf_name]))
                if m.layer is None:
                    array[...] = value
                else:
                    array[m.layer] = value
                bar.update()
            if path == ("embed_tokens",) and config.tie_word_embeddings:
                _warn_if_head_differs(infos, array, directory)
            yield path, array


def _warn_if_head_differs(infos, embedding: np.ndarray, directory) -> None:
    """A tied config whose file holds an `lm_head.weight` of its own, other than the embeddings:
    tied, the model ignores it (as transformers 4 does; transformers 5 unties and uses it)."""
    if "lm_head.weight" not in infos:
        return
    head = safetensors_io.read_tensor(infos["lm_head.weight"]).astype(embedding.dtype)
    if head.shape != embedding.shape or not np.array_equal(head, embedding):
        warnings.warn(
            f"{directory}: config.json ties the word embeddings (tie_word_embeddings true), but "
            "the checkpoint's lm_head.weight differs from them; it is not used (transformers 5 "
            "would use it instead)",
            stacklevel=2,
        )


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def is_merged(directory: str | Path) -> bool:
    """Whether an HF directory holds AHN weights beside the base's (the merged layout of the
    reference's merge_weights.py; `ahn_weights.hf_layout`)."""
    directory = Path(directory)
    return (
        not converted.is_params_checkpoint(directory)
        and ahn_weights.hf_layout(directory) == "merged"
    )


def check_holds_a_base(
    directory: str | Path,
    advice: str = "give the base model's directory as the model and this one as ahn_path (--ahn)",
) -> None:
    """ConfigError, ending in `advice`, when an HF directory where base weights are expected holds
    AHN weights only (otherwise each base tensor would be reported missing)."""
    directory = Path(directory)
    if converted.is_params_checkpoint(directory):
        return
    if ahn_weights.hf_layout(directory) == "ahn_only":
        raise ConfigError(
            f"{directory} holds AHN weights only (no {ahn_weights.BASE_TENSOR}): {advice}"
        )


def records_ahn(directory: str | Path) -> bool:
    """Whether a directory's config.json is an AHN config (with its inference W and S): a merged
    HF directory, or an Orbax checkpoint converted from one (its config.json kept verbatim)."""
    return read_hf_config(directory).get("_ahn_implementation") is not None


def _stored_ahn(path: Path) -> dict:
    """The AHN type and full-attention layers of the weights a checkpoint holds itself ({} when
    none); not the marker's other fields (the stored tensors' dtypes are no model setting)."""
    if converted.is_params_checkpoint(path):
        found = converted.read_marker(path).get("ahn")
    elif is_merged(path):
        found = ahn_weights.read_ahn_settings(path)
    else:
        return {}
    return {} if found is None else {k: found[k] for k in ("ahn_type", "full_attention_layers")}


def _merged_ahn_source(path: Path, config: ModelConfig) -> Path | None:
    """`path` when it is a merged HF directory whose AHN weights are of the type asked for."""
    if not is_merged(path) or config.ahn_type is None:
        return None
    return path if _stored_ahn(path)["ahn_type"] == config.ahn_type else None


def _ahn_settings(path: Path, ahn_type, ahn_path, full_attention_layers) -> dict:
    """The AHN type and full-attention layers asked for, reconciled with what files say."""
    settings = {"ahn_type": None, "full_attention_layers": ()}
    settings.update(_stored_ahn(path))
    source = path  # where the AHN weights that load come from, when of the type asked for
    if ahn_path is not None:
        found = ahn_weights.read_ahn_settings(ahn_path)
        settings = {k: found[k] for k in ("ahn_type", "full_attention_layers")}
        source = ahn_path
    stored_type = settings["ahn_type"]
    if ahn_type is not None:
        if ahn_path is not None and ahn_type != settings["ahn_type"]:
            raise ConfigError(
                f"ahn_type={ahn_type!r} but the AHN weights in {ahn_path} are of type "
                f"{settings['ahn_type']!r}"
            )
        settings["ahn_type"] = ahn_type
    if full_attention_layers is not None:
        layers = tuple(full_attention_layers)
        # weights that load (not fresh ones) keep the layers they were trained with
        loads = stored_type is not None and stored_type == settings["ahn_type"]
        if loads and layers != tuple(settings["full_attention_layers"]):
            raise ConfigError(
                f"full_attention_layers={list(layers)} but the AHN weights in {source} were "
                f"trained with {list(settings['full_attention_layers'])}"
            )
        settings["full_attention_layers"] = layers
    return settings


def _flat_shardings(abstract_state, mesh, rules) -> dict:
    """Where each parameter goes: the first device, or the mesh by the logical-axis rules."""
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(abstract_state))
    else:
        shardings = nnx.to_pure_dict(state_shardings(abstract_state, mesh, rules))
    return traverse_util.flatten_dict(shardings)


def _restore_converted(path, config, flat_abstract, flat_shardings, ahn_path) -> dict:
    """The parameters of a converted checkpoint, one at a time (bounded peak memory), placed as
    they load; its AHN weights only when they are of the requested type and no `ahn_path` wins."""
    stored_ahn = converted.read_marker(path).get("ahn", {}).get("ahn_type")
    params = {}
    skip_ahn = ahn_path is not None or stored_ahn != config.ahn_type
    for param_path, leaf in flat_abstract.items():
        if skip_ahn and ahn_weights.is_ahn_param(param_path):
            continue
        target = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=flat_shardings[param_path])
        params[param_path] = converted.restore_param(path, param_path, target)
    return params


def from_pretrained(
    path: str | Path,
    *,
    ahn_type: str | None = None,
    ahn_path: str | Path | None = None,
    full_attention_layers: tuple[int, ...] | None = None,
    ahn_output_init: str = "zeros",
    seed: int = 0,
    dtype=jnp.float32,
    compute_dtype=None,
    remat_policy: str = "none",
    kernels: str = "auto",
    mesh: jax.sharding.Mesh | None = None,
    rules=DEFAULT_RULES,
) -> AhnModel:
    """Load a Qwen2/Qwen2.5 model from an HF directory or an Orbax checkpoint of `convert`.

    AHN weights: `ahn_path` loads AHN-only safetensors in the reference's layout (the released
    checkpoints), or the AHN tensors of a merged directory; `ahn_type` ("gdn", "dn", "mamba2")
    adds fresh ones drawn from `seed`, their output projection zero (the student starts as the
    sinks+window model) or, with `ahn_output_init="normal"`, N(0, 0.02). An Orbax checkpoint or
    a merged HF directory (base and AHN tensors together, as the reference's merge_weights.py
    writes) that holds AHN weights brings them, unless `ahn_path` is given or `ahn_type` names
    another type. The layers kept as full attention, `full_attention_layers`, are what the AHN
    files record unless given (weights that load refuse other layers).
    `dtype` is the base parameter dtype (AHN weights stay fp32), `compute_dtype` that of
    activations (defaults to `dtype`). `kernels` picks the forward's kernels ("auto": Pallas on
    TPU, XLA elsewhere; "xla"; "pallas", interpreted off TPU; docs/kernels.md). With `mesh`,
    parameters are placed sharded by the logical-axis `rules` as they load.
    """
    path = Path(path)
    check_holds_a_base(path)
    base_config = from_hf_config(
        read_hf_config(path),
        param_dtype=_dtype_name(dtype),
        dtype=_dtype_name(compute_dtype if compute_dtype is not None else dtype),
        remat_policy=remat_policy,
        kernels=kernels,
    )
    ahn_settings = _ahn_settings(path, ahn_type, ahn_path, full_attention_layers)
    config = base_config.replace(**ahn_settings)
    graphdef, abstract_state = nnx.split(abstract_model(config))
    flat_shardings = _flat_shardings(abstract_state, mesh, rules)
    flat_abstract = traverse_util.flatten_dict(nnx.to_pure_dict(abstract_state))
    if converted.is_params_checkpoint(path):
        params = _restore_converted(path, config, flat_abstract, flat_shardings, ahn_path)
    else:
        # One device_put of the whole tree: on CPU it can alias the numpy buffers, a lower peak
        # than a put per parameter (docs/benchmarks.md, "Checkpoint conversion memory").
        params = dict(iter_hf_params(path, base_config, skip_ahn=is_merged(path)))
    source = ahn_path if ahn_path is not None else _merged_ahn_source(path, config)
    params.update(_missing_ahn(params, flat_abstract, config, source, seed, ahn_output_init))
    params = jax.device_put(params, {p: flat_shardings[p] for p in params})
    nnx.replace_by_pure_dict(abstract_state, traverse_util.unflatten_dict(params))
    model = nnx.merge(graphdef, abstract_state)
    model.ahn_record = _ahn_record(path, ahn_path, config)
    return model


def _ahn_record(path: Path, ahn_path, config: ModelConfig) -> ahn_weights.AhnRecord | None:
    """What the config.json of the AHN weights that loaded records (None for fresh ones)."""
    if ahn_path is not None:
        return ahn_weights.AhnRecord.read(ahn_path)
    stored = _stored_ahn(path).get("ahn_type")
    if config.ahn_type is None or stored != config.ahn_type or not records_ahn(path):
        return None
    return ahn_weights.AhnRecord.read(path)


def _missing_ahn(params, flat_abstract, config, source, seed: int, output_init: str) -> dict:
    """The AHN parameters `params` lacks: from `source` (AHN-only or merged) when given, else
    fresh ones."""
    missing = [p for p in flat_abstract if ahn_weights.is_ahn_param(p) and p not in params]
    if not missing:
        return {}
    if source is None:
        fresh = init_ahn_weights(config, seed, output_init)
        return {p: fresh[p] for p in missing}
    shapes = {p: flat_abstract[p].shape for p in missing}
    # a merged `source` holds the AHN tensors beside the base's; an AHN-only one nothing else:
    # any other tensor there is reported
    return ahn_weights.load_ahn_weights(source, config, shapes, merged=is_merged(source))


def init_ahn_weights(config: ModelConfig, seed: int, output_init: str) -> dict:
    """Fresh stacked AHN weights [L, ...] for every layer, without building the base model."""

    @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None, "logical_axes": "layers"})
    def make(layer_rngs):
        return memory.make_memory(config, layer_rngs, output_init)

    memories = make(nnx.Rngs(params=seed).split(config.num_layers))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(memories)))
    return {("layers", "ahn", *path): np.asarray(value) for path, value in flat.items()}


def save_model(model: AhnModel, directory: str | Path, *, side_files_from=None) -> Path:
    """Write a model (AHN weights included) as an Orbax checkpoint `from_pretrained` reads."""
    config = model.config
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    ahn_settings = None
    if config.ahn_type is not None:
        ahn_settings = {
            "ahn_type": config.ahn_type,
            "full_attention_layers": list(config.full_attention_layers),
        }
    hf_config = to_hf_config(config)
    record = model.ahn_record
    if config.ahn_type is not None and record is not None:
        # as a merged directory's config.json: what the loaded AHN weights record comes back
        # with them (ahn_record, so that save_ahn still writes it)
        hf_config = ahn_weights.ahn_hf_config(
            config,
            window=record.window,
            sinks=record.sinks,
            loss=record.loss,
            window_sampling=record.window_sampling,
        ) | {"save_ahn_only": False}
    converted.save_params(
        directory,
        ((path, np.asarray(value)) for path, value in flat.items()),
        hf_config=hf_config,
        param_dtype=config.param_dtype,
        side_files_from=side_files_from,
        ahn=ahn_settings,
    )
    return Path(directory)


def ahn_params_of(model: AhnModel) -> dict[ParamPath, np.ndarray]:
    """The model's AHN weights, stacked over layers, by path."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, memory.AhnParam)))
    return {path: np.asarray(value) for path, value in flat.items()}
