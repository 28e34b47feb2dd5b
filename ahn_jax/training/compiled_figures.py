"""What XLA says about a compiled program: its per-device memory, its cost analysis, and what the
program text shows (Pallas kernel calls, copies of a decode cache's buffers). Used by
`ahn_jax.training.compile_check`."""

from __future__ import annotations

import math
import re

import numpy as np

# How a Pallas kernel lowered through Mosaic appears in compiled TPU HLO
MOSAIC_CALL = 'custom_call_target="tpu_custom_call"'


def memory_and_flops(compiled) -> dict:
    """XLA's per-device memory figures of a compiled step, their peak, its FLOPs and bytes as
    XLA's cost analysis counts them, and how many Pallas (Mosaic) kernel calls the program holds.

    The cost analysis is a partial count: it sees nothing inside a Pallas call, and it counts a
    loop's body once (the layer scan: one layer of the model), so its FLOPs are far below the
    step's (ahn_jax.costs has first-principles counts). It compares programs of the same loop
    structure, not kernels against XLA."""
    memory = compiled.memory_analysis()
    figures = {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "generated_code_bytes": memory.generated_code_size_in_bytes,
    }
    figures["peak_bytes_per_chip"] = (
        figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
        + figures["temp_bytes"] + figures["generated_code_bytes"]
    )  # fmt: skip
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        **figures,
        "flops_per_chip": float(cost.get("flops", np.nan)),
        "bytes_accessed_per_chip": float(cost.get("bytes accessed", np.nan)),
        # from the program itself, not the setting: a silent fallback to XLA would show here
        "pallas_calls": compiled.as_text().count(MOSAIC_CALL),
    }


def cache_copies(cache_shapes, compiled) -> dict:
    """How many whole-buffer copies of the decode cache's arrays the compiled step makes: the
    program's own `copy` instructions whose shape is that of a cache array on one device
    (`cache_shapes`, dimensions in any order, as a relayout or transpose may put them). A relayout
    inside a fusion streams through on-chip memory, and moves between memory spaces are
    `copy-start`s: neither counts. 0 when XLA updates the donated cache where it lies. Also how
    many `all-gather`s produce an array of such a shape (`cache_gathers`)."""
    # the per-row arrays (k, v, gates, state, slot positions), not the lengths [B]
    wanted = {tuple(sorted(shape)) for shape in cache_shapes if len(shape) > 1 and math.prod(shape)}
    text = compiled.as_text()
    program = text[text.index("\nENTRY ") :]  # the computation the step runs, not fused bodies

    def count(pattern):
        found = re.findall(rf"{pattern}\(", program)
        shapes = [tuple(sorted(int(d) for d in dims.split(","))) for dims in found if dims]
        return sum(shape in wanted for shape in shapes)

    result = r" = \w+\[([\d,]*)\]\S*"
    # gathers: a cache array rebuilt on each chip from pieces other chips hold (a write done
    # split over a mesh axis the cache is not split over), as an all-gather or as XLA:TPU's
    # asynchronous collective fusion
    gathers = count(rf"{result} all-gather(?:-done)?") + count(
        rf"%async-collective-done[\w.]*{result} fusion"
    )
    return {"cache_copies": count(rf"{result} copy"), "cache_gathers": gathers}
