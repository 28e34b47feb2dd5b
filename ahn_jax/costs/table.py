"""What a config costs, from shapes alone (nothing is allocated): parameters, cache memory, FLOPs
(the command line is ahn_jax/costs/__main__.py).

  python -m ahn_jax.costs --config=configs/qwen3b_gdn.py [--ahn_type gdn|dn|mamba2] \
      [--length 128000] [--window 32640 --sinks 128] [--bytes_per_element 4] [--plot costs.png] \
      [--full_attention_layers 0,17] [--json]

Parameter counts (docs/method.md §Costs) come from `jax.eval_shape` of the model, so a 14B config
costs milliseconds. Cache memory and FLOPs follow the paper's Table 1 formulas (docs/method.md
§Costs; FLOPs in ahn_jax/costs/formulas.py) with W = window + sinks, the whole lossless memory: at
128,000 tokens they reproduce the paper's Table 9. That cache counts the values held at L tokens
(min(L, S + W) per windowed layer). What `model.init_cache` allocates, up front and whatever L
(S + W + 1 slots per windowed layer, K/V in the config's dtype), is reported beside it at batch 1
(`allocated_cache_bytes`, from `decode_cache_bytes`: tests compare it with a real cache), with the
AHN's gate cache (the per-slot write gates, which the paper leaves out) as part of it. Layers kept
as full attention (`--full_attention_layers`, the reference's fa_layer_ids) cost as full attention
at L, in FLOPs and cache; the others as window + AHN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from ahn_jax.config import MODES, ModelConfig
from ahn_jax.costs import formulas
from ahn_jax.model.cache import gate_width
from ahn_jax.model.memory import AhnParam, gate_names
from ahn_jax.model.transformer import abstract_model


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Base and AHN parameter counts of a config (AHN counted in every layer, as the reference
    builds it even for layers kept as full attention)."""
    _, ahn_state, base_state = nnx.split(abstract_model(config), AhnParam, ...)

    def count(state):
        return sum(leaf.size for leaf in nnx.to_flat_state(state).leaves)

    return {"base_params": count(base_state), "ahn_params": count(ahn_state)}


def cache_bytes(
    config: ModelConfig, length: int, window: int, sinks: int, bytes_per_element: int = 4
) -> dict[str, int]:
    """The paper's cache per sequence: KV of every token (full), of the S + W kept tokens (swa),
    plus the H x H state of each query head (ahn). Layers kept as full attention keep their KV."""
    H, Nq, Nkv = config.head_dim, config.num_heads, config.num_kv_heads
    full_layers, memory_layers = formulas.layer_split(config)
    kept = min(length, window + sinks)
    full_kv = 2 * length * H * Nkv * config.num_layers
    windowed = 2 * H * Nkv * (full_layers * length + memory_layers * kept)
    return {
        "full": full_kv * bytes_per_element,
        "swa": windowed * bytes_per_element,
        "ahn": (windowed + memory_layers * H * H * Nq) * bytes_per_element,
    }


def gate_cache_bytes(config: ModelConfig, window: int, sinks: int) -> int:
    """The AHN write gates kept (fp32) for every cached slot (S + W + 1, ahn_jax/model/cache.py),
    which the paper does not count: the cache's row of them per slot, padding lanes included."""
    if config.ahn_type is None:
        return 0
    _, memory_layers = formulas.layer_split(config)
    n_gates = len(gate_names(config.ahn_type))
    return (window + sinks + 1) * gate_width(config.num_heads, memory_layers, n_gates) * 4


def decode_cache_bytes(
    config: ModelConfig,
    window: int,
    sinks: int,
    mode: str,
    batch_size: int = 1,
    max_length: int | None = None,
) -> int:
    """Bytes of `model.init_cache(batch_size, window=, sinks=, mode=, max_length=)`: KV in the
    compute dtype, gates and state in fp32 (mode "ahn" only), and the slot bookkeeping (int32
    positions per slot and a length, per row). Layers kept as full attention hold K and V for
    `max_length` positions, with their own slot positions, and no gates or state (no memory runs
    there); in mode "full" every layer is alike, so none gets such a group. A windowed layer
    holds S + W + 1 slots: the window, the sinks and the slot a decode step writes before it
    evicts (ahn_jax/model/cache.py)."""
    full_layers, memory_layers = formulas.layer_split(config)
    if mode == "full":
        full_layers, memory_layers = 0, config.num_layers
    if full_layers and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(
            f"layers {sorted(set(config.full_attention_layers))} keep full attention, whose "
            f"cache holds the whole context: max_length must be >= 1, got {max_length!r}"
        )
    B, C = batch_size, window + sinks + 1
    M = max_length if full_layers else 0
    slots = memory_layers * C + full_layers * M  # K and V slots summed over layers
    total = 2 * B * slots * config.num_kv_heads * config.head_dim
    total *= np.dtype(config.jnp_dtype).itemsize
    if mode == "ahn":
        total += B * gate_cache_bytes(config, window, sinks)
        total += 4 * memory_layers * B * config.num_heads * config.head_dim**2  # the states
    return total + 4 * B * (C + 1 + M)  # slot positions, length, the full layers' positions


def allocated_cache_bytes(config: ModelConfig, length: int, window: int, sinks: int) -> dict:
    """What `model.init_cache(1, ...)` allocates for a context of `length` tokens, by mode: "full"
    a plain cache of L + 1 slots (window L, no sinks), "swa" and "ahn" S + W + 1 slots per
    windowed layer whatever L (layers kept as full attention: L). None for "ahn" without an AHN
    (such a model has no mode "ahn")."""
    return {
        "full": decode_cache_bytes(config, length, 0, "full"),
        "swa": decode_cache_bytes(config, window, sinks, "swa", max_length=length),
        "ahn": (decode_cache_bytes(config, window, sinks, "ahn", max_length=length)
                if config.ahn_type else None),
    }  # fmt: skip


def report(
    config: ModelConfig,
    length: int = 128_000,
    window: int = 32_640,
    sinks: int = 128,
    bytes_per_element: int = 4,
    window_source: str = "given",
) -> dict:
    """Every cost of `config` at `length` tokens with W = `window`, S = `sinks`;
    `window_source` says where W and S came from (printed with them)."""
    counts = parameter_counts(config)
    lossless = window + sinks
    mixing = {mode: formulas.mixing_flops(config, length, mode, lossless) for mode in MODES}
    model = {
        mode: formulas.model_flops(
            config, length, mode, lossless, base_params=counts["base_params"]
        )
        for mode in MODES
    }
    forward = {mode: formulas.forward_flops(config, length, mode, lossless) for mode in MODES}
    cache = cache_bytes(config, length, window, sinks, bytes_per_element)
    return {
        "ahn_type": config.ahn_type,
        **counts,
        "ahn_fraction": counts["ahn_params"] / counts["base_params"],
        "ahn_params_per_layer": counts["ahn_params"] // config.num_layers,
        "full_attention_layers": sorted(set(config.full_attention_layers)),
        "length": length,
        "window": window,
        "sinks": sinks,
        "window_source": window_source,
        "bytes_per_element": bytes_per_element,
        "cache_bytes": cache,
        "allocated_cache_bytes": allocated_cache_bytes(config, length, window, sinks),
        "dtype": config.dtype,
        "gate_cache_bytes": gate_cache_bytes(config, window, sinks),
        "mixing_flops": mixing,
        "model_flops": model,
        "forward_flops": forward,
        "ratios": {
            "cache_ahn_over_full": cache["ahn"] / cache["full"],
            "mixing_ahn_over_full": mixing["ahn"] / mixing["full"],
            "model_ahn_over_full": model["ahn"] / model["full"],
            "forward_ahn_over_full": forward["ahn"] / forward["full"],
        },
    }


# (marker, line style) per mode, as evaluation/figures.py's LINE_STYLES
MODE_STYLES = {"full": ("o", "-"), "swa": ("s", "--"), "ahn": ("^", ":")}


def plot(
    config: ModelConfig, path, max_length: int, window: int, sinks: int, bpe: int, title: str = ""
) -> Path:
    """Cache bytes and mixing FLOPs against context length for full, swa and ahn (log-log), written
    to `path` (a PNG where it names no format: matplotlib's default); returns the file written.
    `title` names the config and where W and S came from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = np.unique(np.geomspace(1024, max_length, 48).astype(int))
    fig, (ax_cache, ax_flops) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in MODES:  # swa and ahn overlap in cache: distinct styles keep both visible
        cache = [cache_bytes(config, int(n), window, sinks, bpe)[mode] for n in lengths]
        mix = [formulas.mixing_flops(config, int(n), mode, window + sinks) for n in lengths]
        marker, linestyle = MODE_STYLES[mode]
        style = dict(linestyle=linestyle, marker=marker, markevery=6, markerfacecolor="none")
        ax_cache.plot(lengths, cache, label=mode, **style)
        ax_flops.plot(lengths, mix, label=mode, **style)
    labels = ((ax_cache, f"decode cache (bytes, {bpe} per value)", "cache held at L"),
              (ax_flops, "mixing FLOPs (per sequence)", "token-mixing FLOPs"))  # fmt: skip
    for ax, ylabel, name in labels:
        ax.set(xscale="log", yscale="log", xlabel="context length L (tokens)", ylabel=ylabel)
        ax.set_title(name)
        ax.axvline(window + sinks, color="grey", linestyle="-.", linewidth=1,
                   label=f"W + S = {window + sinks:,}")  # fmt: skip
        ax.legend()
    kind = config.ahn_type or "no AHN"
    fig.suptitle(f"{title or kind}: AHN {kind}, W = {window:,}, S = {sinks}")
    fig.tight_layout()
    formats = fig.canvas.get_supported_filetypes()  # a name without one of them: a PNG
    path = Path(path)
    path = path if path.suffix[1:].lower() in formats else path.with_name(path.name + ".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _size(n_bytes: float) -> str:
    """Bytes in the largest decimal unit that leaves a number >= 1 (a tiny model's cache is
    kilobytes, which GB would print as 0.00)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes:.0f} B"


def _layers_line(full_layers: list[int]) -> list[str]:
    """A line for layers kept as full attention (none: no line, the paper's setting)."""
    if not full_layers:
        return []
    return [f"full attention: layers {full_layers} (their cache and FLOPs grow with L)"]


def _allocated_lines(result: dict) -> list[str]:
    """What init_cache allocates (not the paper's held values), and the gate cache within it."""
    sizes = {mode: "-" if n is None else _size(n)
             for mode, n in result["allocated_cache_bytes"].items()}  # fmt: skip
    return [
        f"allocated:      full {sizes['full']}, swa {sizes['swa']}, ahn {sizes['ahn']} "
        f"(model.init_cache at batch 1, K/V in {result['dtype']}: S + W + 1 slots whatever L; "
        "full L + 1)",
        f"gate cache:     {_size(result['gate_cache_bytes'])} (the AHN's write gates, fp32, in "
        "ahn's allocated bytes; not in the paper)",
    ]


def format_report(result: dict) -> str:
    """A `report` as the lines `python -m ahn_jax.costs` prints."""
    cache, mixing, model = result["cache_bytes"], result["mixing_flops"], result["model_flops"]
    forward, ratios = result["forward_flops"], result["ratios"]
    held = min(result["length"], result["window"] + result["sinks"])  # per windowed layer
    return "\n".join([
        f"AHN type:       {result['ahn_type']}",
        f"base params:    {result['base_params']:,}",
        f"AHN params:     {result['ahn_params']:,} ({100 * result['ahn_fraction']:.2f}% of the "
        f"base; {result['ahn_params_per_layer']:,} per layer)",
        *_layers_line(result["full_attention_layers"]),
        f"at L = {result['length']:,}, W = {result['window']:,}, S = {result['sinks']} "
        f"({result['window_source']}):",
        f"cache:          full {_size(cache['full'])}, swa {_size(cache['swa'])}, ahn "
        f"{_size(cache['ahn'])} ({100 * ratios['cache_ahn_over_full']:.1f}% of full; the "
        f"paper's: the values held at L, {held:,} tokens a windowed layer, "
        f"{result['bytes_per_element']} bytes each)",
        *_allocated_lines(result),
        f"mixing FLOPs:   full {mixing['full']:.3e}, swa {mixing['swa']:.3e}, ahn "
        f"{mixing['ahn']:.3e} ({100 * ratios['mixing_ahn_over_full']:.1f}%)",
        f"model FLOPs:    full {model['full']:.3e}, swa {model['swa']:.3e}, ahn "
        f"{model['ahn']:.3e} ({100 * ratios['model_ahn_over_full']:.1f}%; the paper's accounting)",
        f"forward FLOPs:  full {forward['full']:.3e}, swa {forward['swa']:.3e}, ahn "
        f"{forward['ahn']:.3e} ({100 * ratios['forward_ahn_over_full']:.1f}%; each matmul once)",
    ])  # fmt: skip
