"""Will the train step (or the decode step, or a chunk of prefill) fit? Compile it ahead of time
for a TPU topology, from a CPU host.

  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5p-8 \\
      [--kernels=pallas|xla] [--mesh=fsdp=4] [--seq_len=24576] [--batch_size=4] [--json]
  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5e-8 --step=decode \\
      --batch_size=16 [--window=32640 --sinks=128]
  python -m ahn_jax.compile_check --config=configs/qwen3b_gdn.py --topology=v5e-1 --step=prefill \\
      --batch_size=4 [--chunk_size=1024]

Needs `jax[tpu]`'s libtpu (the `tpu` or `test` extra) and JAX_PLATFORMS=cpu; nothing runs on a TPU.
The whole jitted step of `ahn_jax.train` (teacher and student forwards, KL loss, backward, AdamW) is
lowered with abstract, sharded inputs (frozen weights in the config's dtype, AHN weights and
optimizer state in fp32) and compiled by XLA:TPU for the topology's chips; the report is XLA's own
per-device memory analysis against the chip's HBM. An HBM overflow is a compile error, reported as
"does not fit". Pallas kernels are lowered through Mosaic for real (`kernels`: "pallas", "xla" or
"auto" = Pallas for a TPU; ahn_jax/model/kernel_choice.py), so their tiling and VMEM use are checked
too. The decode step compiles one token per row against a full cache of S + W + 1 slots, the cache
split over the mesh by rows; `--step=prefill` one chunk of a prompt against the same cache. What
this cannot tell: speed and numerics (nothing executes), and host-side memory.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ahn_jax.config import KERNELS, ConfigError, TrainConfig, check_objective, validate_config
from ahn_jax.model import kernel_choice
from ahn_jax.model.cache import CACHE_AXES, DecodeCache
from ahn_jax.model.memory import AhnParam, recurrence_impl
from ahn_jax.model.sharding import MeshError, make_mesh, partition_spec, state_shardings
from ahn_jax.model.transformer import abstract_model, decode_step, extend_cache
from ahn_jax.training import compiled_figures
from ahn_jax.training.distributed import parse_mesh, row_split_warning, unsplit_rows
from ahn_jax.training.optimizer import opt_state_shardings, optimizer_for
from ahn_jax.training.step import make_train_step
from ahn_jax.training.tpu_topologies import HBM_BYTES, topology_devices
from kernels.common import pallas_mode


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _mesh(topology: str, mesh_spec: str, default_spec: str | None):
    description, devices = topology_devices(topology)
    source = "--mesh" if mesh_spec else "train.mesh"
    mesh_spec = mesh_spec or default_spec or f"fsdp={len(devices)}"
    try:
        return description, devices, make_mesh(parse_mesh(mesh_spec, source), devices)
    except MeshError as e:
        raise ConfigError(f"mesh {mesh_spec!r} on {topology}: {e}") from e


def _base_report(step, topology, description, devices, mesh, model_config, kernels) -> dict:
    generation = description.split(":")[0]
    return {
        "step": step,
        "topology": topology,
        "description": description,
        "chips": len(devices),
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "param_dtype": model_config.param_dtype,
        **kernel_choice.describe(kernels, "tpu"),
        # a model without AHN (the full-attention baseline) runs no recurrence
        **({} if model_config.ahn_type else {"recurrence": "none (no AHN)"}),
        "hbm_bytes_per_chip": HBM_BYTES.get(generation),
    }


def _compile(lowered, report: dict, keep: bool = False, read=None):
    """Compile `lowered` and complete `report` with XLA's figures and the verdict; an HBM
    overflow is the verdict "does not fit". With `keep`, the compiled program itself, unless it
    does not fit (then the report); `read(compiled)` adds figures of its own. The step's compile
    says it starts (on stderr): its report comes minutes later for a real model."""
    if not keep:
        print(f"compiling the {report['step']} step for {report['topology']} ...",
              file=sys.stderr, flush=True)  # fmt: skip
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA:TPU reports HBM overflow as a compile error
        if "memory" not in str(e).lower():
            raise
        report.update(fits=False, error=str(e).splitlines()[-1][:500])
        return report
    if keep:
        return compiled
    report["compile_seconds"] = round(time.perf_counter() - start, 1)
    report.update(compiled_figures.memory_and_flops(compiled), **(read(compiled) if read else {}))
    hbm = report["hbm_bytes_per_chip"]
    report["fits"] = hbm is None or report["peak_bytes_per_chip"] <= hbm
    return report


def check(
    config, topology: str, mesh_spec: str = "", seq_len=None, batch_size=None, kernels=None
) -> dict:
    """Compile the train step of a config ConfigDict for `topology`; XLA's per-device memory
    figures and the verdict. `mesh_spec`, `seq_len`, `batch_size` and `kernels` default to the
    config's."""
    model_config = _with_kernels(validate_config(config), kernels)
    t = TrainConfig.from_dict(config.train.to_dict())
    seq_len = seq_len or t.seq_len
    batch_size = batch_size or t.batch_size
    t = dataclasses.replace(t, batch_size=batch_size)  # checked against micro_batches as train's
    description, devices, mesh = _mesh(topology, mesh_spec, t.mesh)

    # distillation trains the AHN weights; "pretrain" (the full-attention baseline: the same base,
    # no AHN, every weight trained by next-token CE, kept in float32 as train requires) trains
    # every weight
    trained = AhnParam
    if t.objective == "pretrain":
        trained, model_config = nnx.Param, model_config.replace(ahn_type=None)
    check_objective(model_config, t)
    graphdef, trainable, frozen = nnx.split(abstract_model(model_config), trained, ...)
    trainable = _abstract(trainable, state_shardings(trainable, mesh))
    frozen = _abstract(frozen, state_shardings(frozen, mesh))
    tx, schedule = optimizer_for(t)
    # (outside the TPU mesh: optax builds its placeholder state with host arrays)
    shardings = opt_state_shardings(tx, trainable, mesh)
    with jax.set_mesh(mesh), pallas_mode.compiled_for_tpu():
        report = _base_report(
            "train", topology, description, devices, mesh, model_config, model_config.kernels
        )
        report.update(seq_len=seq_len, batch_size=batch_size, micro_batches=t.micro_batches,
                      objective=t.objective)  # fmt: skip
        # as train warns: rows the mesh's batch axes do not divide are repeated on devices
        if warning := row_split_warning(t, mesh):
            report["warning"] = warning
        # the optimizer state placed as training places it, moments like their weights (all the
        # weights', when pretraining: that alone may not fit)
        init = _compile(
            jax.jit(tx.init, out_shardings=shardings).lower(trainable), dict(report), keep=True
        )
        if isinstance(init, dict):
            return init
        opt_state = _abstract(jax.eval_shape(tx.init, trainable), init.output_shardings)
        batch = {k: _by_rows((batch_size, seq_len), mesh) for k in ("input_ids", "labels")}
        # each row's window and sinks, split over the mesh like the rows
        batch.update({k: _by_rows((batch_size,), mesh) for k in ("window", "sinks")})
        scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
        step = make_train_step(graphdef, tx, schedule, t)
        lowered = step.lower(trainable, opt_state, frozen, batch, scalar)
        return _compile(lowered, report)


def _by_rows(shape, mesh):
    """An abstract int32 input whose first axis is the batch's rows, split over the mesh as they
    are."""
    spec = partition_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh)
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=NamedSharding(mesh, spec))


def _with_kernels(model_config, kernels: str | None):
    """The model config with `kernels` (None: as it is)."""
    if kernels is None:
        return model_config
    if kernels not in KERNELS:
        raise ConfigError(f"--kernels must be one of {KERNELS}, got {kernels!r}")
    return model_config.replace(kernels=kernels)


def _abstract_cache(model, mesh, batch_size, window, sinks, max_length) -> DecodeCache:
    cache = jax.eval_shape(
        lambda: model.init_cache(batch_size, window=window, sinks=sinks, max_length=max_length)
    )

    def place(name, x):
        spec = partition_spec(CACHE_AXES[name], x.shape, mesh)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    fields = {
        name: jax.tree.map(lambda x, name=name: place(name, x), value)
        for name, value in vars(cache).items()
        if name in CACHE_AXES
    }
    return cache.replace(**fields)


def check_decode(
    config,
    topology: str,
    mesh_spec: str = "",
    batch_size: int = 1,
    window: int = 32640,
    sinks: int = 128,
    max_length: int | None = None,
) -> dict:
    """Compile one decode step (one token per row against a cache of S + W + 1 slots; layers kept as
    full attention hold `max_length` positions) for `topology`: XLA's per-device memory figures,
    FLOPs and bytes accessed, and the verdict. The cache and the AHN states are the donated
    arguments, updated in place."""
    return _check_cached(config, topology, mesh_spec, batch_size, (window, sinks, max_length))


def check_prefill(
    config,
    topology: str,
    mesh_spec: str = "",
    batch_size: int = 1,
    window: int = 32640,
    sinks: int = 128,
    max_length: int | None = None,
    chunk_size: int = 1024,
    kernels: str | None = None,
) -> dict:
    """Compile one chunk of prefill (`AhnModel.prefill`: `chunk_size` tokens per row against the
    cache, donated as every chunk after the first is) for `topology`, as `check_decode` does the
    decode step. Prefill's recurrences follow `kernels` (default: the config's); its attention
    reads the cache in blocks (docs/kernels.md)."""
    return _check_cached(
        config, topology, mesh_spec, batch_size, (window, sinks, max_length), chunk_size, kernels
    )


def _check_cached(config, topology, mesh_spec, batch_size, sizes, chunk_size=None, kernels=None):
    """check_decode (`chunk_size` None) or check_prefill: one call of the cached path, its cache
    (`sizes`: W, S, max_length) donated."""
    model_config = _with_kernels(validate_config(config), kernels)
    window, sinks, max_length = sizes
    if model_config.full_attention_layers and max_length is None:
        raise ConfigError(
            f"ahn.full_attention_layers {model_config.full_attention_layers} keep every position: "
            "give --max_length, the positions their cache holds"
        )
    t = TrainConfig.from_dict(config.train.to_dict()) if "train" in config else None
    description, devices, mesh = _mesh(topology, mesh_spec, t.mesh if t else None)
    model = abstract_model(model_config)
    graphdef, state = nnx.split(model)
    state = _abstract(state, state_shardings(state, mesh))
    step = "decode" if chunk_size is None else "prefill"
    with jax.set_mesh(mesh), pallas_mode.compiled_for_tpu():
        cache = _abstract_cache(model, mesh, batch_size, window, sinks, max_length)
        per_row = _by_rows((batch_size,), mesh)  # the tokens of a decode step; prefill's counts
        if step == "decode":
            call, inputs = functools.partial(decode_step, graphdef), (per_row,)
        else:  # every row's chunk whole: the program is the same whatever the cache holds
            call = functools.partial(extend_cache, graphdef)
            inputs = (_by_rows((batch_size, chunk_size), mesh), per_row)
        logits = partition_spec(("batch", "vocab"), (batch_size, model_config.vocab_size), mesh)
        # the cache leaves as it came: left to XLA, the gates came back split over `tensor`
        # and were written anew every step instead of in place
        out = (NamedSharding(mesh, logits), jax.tree.map(lambda x: x.sharding, cache))
        donated = jax.jit(call, donate_argnums=(2,), out_shardings=out)
        lowered = donated.lower(state, inputs[0], cache, *inputs[1:])
        report = _base_report(
            step, topology, description, devices, mesh, model_config, model_config.kernels
        )
        report.update(batch_size=batch_size, window=window, sinks=sinks, max_length=max_length,
                      cache_bytes=_cache_bytes(cache))  # fmt: skip
        if split := unsplit_rows(batch_size, mesh):
            report["warning"] = (
                f"warning: batch {batch_size} does not divide the mesh's {split[0]} ({split[1]}): "
                "every chip holds the cache of the rows it cannot split (replicated) and XLA "
                f"may copy it each step; give a multiple of {split[1]} rows, or a --mesh whose "
                "batch axes divide them (e.g. --mesh=tensor=N, or one chip)"
            )
        if step == "decode":  # decode runs its own step kernels whatever model.kernels says
            report.update(kernels="decode step", recurrence="one token a step", attention="cache")
        else:
            report.update(chunk_size=chunk_size, attention="cache blocks")
            if model_config.ahn_type:  # short chunks run the recurrence token by token
                report["recurrence"] = recurrence_impl(chunk_size, report["recurrence"])
        shapes = [x.sharding.shard_shape(x.shape) for x in jax.tree.leaves(cache)]
        copies = functools.partial(compiled_figures.cache_copies, shapes)
        return _compile(lowered, report, read=copies)


def _cache_bytes(cache) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)))


def _gib(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    """The report as the lines `python -m ahn_jax.compile_check` prints."""
    where = (f"on {report['topology']} ({report['description']}, {report['chips']} x "
             f"{report['device_kind']}), mesh {report['mesh']}")  # fmt: skip
    kernels = (f"kernels {report['kernels']} (recurrence {report['recurrence']}, attention "
               f"{report['attention']})")  # fmt: skip
    if report["step"] == "train":
        lines = [f"train step ({report['objective']}) {where}, batch {report['batch_size']} x "
                 f"{report['seq_len']} tokens ({report['micro_batches']} micro-batch(es)), "
                 f"{kernels}"]  # fmt: skip
    else:
        what = "decode step "
        if report["step"] == "prefill":
            what = f"one prefill chunk of {report['chunk_size']} tokens a row, {kernels}, "
        lines = [f"{what}{where}, batch {report['batch_size']}, cache of S + W + 1 = "
                 f"{report['sinks']} + {report['window']} + 1 slots "
                 f"({_gib(report['cache_bytes'])} in all)"]  # fmt: skip
    lines += [report["warning"]] if "warning" in report else []
    if "error" in report:
        return "\n".join([*lines, f"does NOT fit: {report['error']}"])
    for name in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes",
                 "peak_bytes_per_chip"):  # fmt: skip
        lines.append(f"  {name:22s} {_gib(report[name])}")
    lines.append(f"  HBM per chip           {_gib(report['hbm_bytes_per_chip'])}")
    lines.append(f"  Pallas kernel calls    {report['pallas_calls']}")
    if "cache_copies" in report:  # 0: the donated cache is updated in place
        lines.append(f"  cache buffer copies    {report['cache_copies']}")
        lines.append(f"  cache buffer gathers   {report['cache_gathers']}")
    partial = "(cost analysis: a scanned layer once, inside Pallas calls nothing)"
    lines.append(f"  XLA FLOPs per chip     {report['flops_per_chip']:.3e} {partial}")
    lines.append(f"  XLA bytes per chip     {report['bytes_accessed_per_chip']:.3e}")
    lines.append(f"  compile                {report['compile_seconds']} s")
    lines.append("fits" if report["fits"] else "does NOT fit")
    return "\n".join(lines)
