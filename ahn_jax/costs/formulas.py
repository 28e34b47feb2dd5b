"""FLOPs of a forward pass by the paper's accounting (docs/method.md §Costs, the paper's Table 1).

Per layer, with L tokens, D = hidden size, H = head dim, Nq / Nkv heads and W the lossless memory
(window + sinks), matmuls only, causal:
  full:  4 L D H (Nq + Nkv) + 2 H Nq L^2
  swa:   4 L D H (Nq + Nkv) + 2 H Nq W^2 + 2 (L - W) (2 W H Nq)
  ahn:   the swa terms + 2 (L - W) (2 H^2 Nq + 3 D Nq)   (the memory's read, write and gates)
"Model FLOPs" add 2 L per base parameter (the paper's 3B figures: mixing + 2 L * 3.09 B).
Layers kept as full attention (`full_attention_layers`) count as full in every mode.
"""

from __future__ import annotations

from ahn_jax.config import MODES, ModelConfig

# Dense bf16 peak of one device, FLOP/s, by `jax.Device.device_kind` (vendor datasheets). A device
# not listed gets no MFU unless `train.peak_flops_per_device` names its peak.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
}


def _layer_mixing(config: ModelConfig, length: int, mode: str, window: int) -> float:
    L, D, H = length, config.hidden_size, config.head_dim
    Nq, Nkv = config.num_heads, config.num_kv_heads
    projections = 4 * L * D * H * (Nq + Nkv)
    if mode == "full" or L <= window:
        return projections + 2 * H * Nq * L**2
    evicted = L - window
    mixing = projections + 2 * H * Nq * window**2 + 2 * evicted * (2 * window * H * Nq)
    if mode == "ahn":
        mixing += 2 * evicted * (2 * H**2 * Nq + 3 * D * Nq)
    return mixing


def layer_split(config: ModelConfig) -> tuple[int, int]:
    """(layers kept as full attention, layers with window + memory)."""
    full = len(set(config.full_attention_layers))
    return full, config.num_layers - full


def mixing_flops(config: ModelConfig, length: int, mode: str, window: int = 0) -> float:
    """Token-mixing FLOPs of one sequence's forward pass over all layers; `window` is the whole
    lossless memory W (window + sinks) for "swa" and "ahn"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "full" and window < 1:
        raise ValueError(f"mode {mode!r} needs window >= 1, got {window}")
    full_layers, memory_layers = layer_split(config)
    return full_layers * _layer_mixing(config, length, "full", window) + (
        memory_layers * _layer_mixing(config, length, mode, window)
    )


def model_flops(
    config: ModelConfig, length: int, mode: str, window: int = 0, *, base_params: int
) -> float:
    """Mixing FLOPs + 2 L per base parameter: the paper's "model FLOPs" of one forward pass."""
    return mixing_flops(config, length, mode, window) + 2 * length * base_params


def distillation_step_flops(
    config: ModelConfig, length: int, window: int, *, base_params: int
) -> float:
    """One sequence's work in a training step: the teacher's forward (full attention) plus the
    student's forward and its backward to the activations (about one more forward; the frozen
    weights get no weight gradients, and the AHN's own are ~0.3% of the model)."""
    teacher = model_flops(config, length, "full", base_params=base_params)
    student = model_flops(config, length, "ahn", window, base_params=base_params)
    return teacher + 2 * student


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
    """A device's peak FLOP/s for MFU: the override when > 0, else the table's, else None."""
    if override > 0:
        return override
    return PEAK_FLOPS.get(device_kind)
