"""Which kernels the model runs: the one place `ModelConfig.kernels` is read (docs/kernels.md
§Kernels in the model).

  "xla"     the recurrences' XLA chunked form shaped for the platform ("chunked", each chunk's
            work inside one scan, on the CPU; "batched", every chunk's intra-chunk terms at once
            and only the thin state recurrence sequential, on GPU and TPU) and the blocked XLA
            sink-window attention;
  "pallas"  the Pallas kernels: the recurrences' inter-chunk scan and the sink-window attention
            with W and S per row as scalar-prefetch operands (on a CPU in interpret mode, for
            tests; refused on a GPU, where these TPU kernels would only run interpreted);
  "auto"    "pallas" on TPU, "xla" elsewhere.

This covers the parallel forward (training, scoring) and the recurrences of prefill; decode keeps
its one-token step kernels, and prefill's attention reads the cache's slots through a mask.

The platform is the one the program is compiled for: a TPU when Pallas kernels are lowered for
real (on a TPU, or from a CPU host under `pallas_mode.compiled_for_tpu()`, as compile_check does),
else JAX's default backend. Resolution happens at trace time, so the same model object serves
every platform.

Pallas calls are not partitioned by XLA's sharding propagation: inside a mesh context they run
under `shard_map` over the batch (and heads where both query and kv heads divide evenly), each
device on its own rows and heads.
"""

from __future__ import annotations

import dataclasses

import jax

from ahn_jax.config import KERNELS, ConfigError
from ahn_jax.model.sharding import partition_spec
from kernels.common import pallas_mode


@dataclasses.dataclass(frozen=True)
class Kernels:
    recurrence: str  # `impl` of kernels.delta_rule / kernels.ssd: "chunked", "batched", "pallas"
    attention: str  # `impl` of kernels.window_attention.causal_attention: "blocked", "pallas"

    @property
    def uses_pallas(self) -> bool:
        return "pallas" in (self.recurrence, self.attention)


def target_platform() -> str:
    """The platform being compiled for: "tpu" whenever Pallas lowers for real."""
    return "tpu" if not pallas_mode.interpret() else jax.default_backend()


def resolve(kernels: str, platform: str | None = None) -> Kernels:
    """The kernels that `kernels` ("auto", "xla", "pallas") means on `platform` (default: the
    one being compiled for)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    platform = target_platform() if platform is None else platform
    if kernels == "auto":
        kernels = "pallas" if platform == "tpu" else "xla"
    if kernels == "pallas":
        if platform == "gpu":
            raise ConfigError(
                "kernels='pallas' selects TPU (Mosaic) kernels, which a GPU would only run "
                "in Pallas' slow interpreter; use 'auto' or 'xla' on a GPU"
            )
        return Kernels(recurrence="pallas", attention="pallas")
    return Kernels(recurrence="chunked" if platform == "cpu" else "batched", attention="blocked")


def describe(kernels: str, platform: str | None = None) -> dict[str, str]:
    """What a report names: the setting and the kernels it resolves to."""
    choice = resolve(kernels, platform)
    return {"kernels": kernels, "recurrence": choice.recurrence, "attention": choice.attention}


def _only_axis(spec):
    """The mesh axes of a one-dimensional PartitionSpec (P() when replicated: None)."""
    return spec[0] if spec else None


def per_shard(fn, args, layouts, out_layouts, *, head_counts: tuple[int, ...]):
    """`fn(*args)`, under `shard_map` when a mesh is active. `layouts` and `out_layouts` (a pytree
    like `fn`'s output) spell each array's axes, "B" for rows and "N" for heads, any other letter
    unsharded ("BTNH", "BNHE", "B"); a None argument is passed through as None. Rows are split
    like the model's batch; heads over the heads rule's axes where that rule splits every count in
    `head_counts` (the query and kv head counts) the same way, else kept whole."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(*args)
    first = next(x for x in args if x is not None)
    batch = _only_axis(partition_spec(("batch",), first.shape[:1], mesh))
    heads_specs = {_only_axis(partition_spec(("heads",), (n,), mesh)) for n in head_counts}
    heads = heads_specs.pop() if len(heads_specs) == 1 else None

    def spec(layout):
        axes = {"B": batch, "N": heads}
        return jax.sharding.PartitionSpec(*(axes.get(letter) for letter in layout))

    present = [i for i, x in enumerate(args) if x is not None]

    def on_shard(*local):
        full = list(args)
        for i, x in zip(present, local, strict=True):
            full[i] = x
        return fn(*full)

    mapped = jax.shard_map(
        on_shard,
        mesh=mesh,
        in_specs=tuple(spec(layouts[i]) for i in present),
        out_specs=jax.tree.map(spec, out_layouts),
        check_vma=False,
    )
    return mapped(*(args[i] for i in present))
