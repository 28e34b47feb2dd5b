"""FLOPs of a forward pass: the paper's accounting (docs/method.md §Costs, the paper's Table 1),
and a first-principles count for throughput and MFU.

Per layer, with L tokens, D = hidden size, H = head dim, Nq / Nkv heads and W the lossless memory
(window + sinks), matmuls only, causal:
  full:  4 L D H (Nq + Nkv) + 2 H Nq L^2
  swa:   4 L D H (Nq + Nkv) + 2 H Nq W^2 + 2 (L - W) (2 W H Nq)
  ahn:   the swa terms + 2 (L - W) (2 H^2 Nq + P D Nq)   (the memory's read, write and gates;
         P its D -> N gate projections: GDN 3, as in the paper, DN and Mamba2 2)
"Model FLOPs" add 2 L per base parameter (the paper's 3B figures: mixing + 2 L * 3.09 B): that
counts the q, k, v, o projections twice (in the mixing term and among the parameters) and, for an
untied model, the embedding lookup as a matmul. `model_flops` keeps that accounting, so that the
paper's -40.5% is reproduced; `forward_flops` counts each matmul once (2 L per matmul weight: the
projections, the MLP and the head; plus attention over the visible keys and the memory), as XLA's
cost analysis does (tests/test_costs), and is what training's MFU uses (a distillation step:
`distillation_step_flops`; a full-attention step of every weight, pretraining:
`full_attention_step_flops`).
Layers kept as full attention (`full_attention_layers`) count as full in every mode.
"""

from __future__ import annotations

from ahn_jax.config import MODES, ModelConfig
from ahn_jax.model.memory import gate_names

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


def _layer_attention(config: ModelConfig, length: int, mode: str, window: int) -> float:
    """One layer's scores and values over the visible keys, plus the memory's read, write and
    gates in mode "ahn" (the paper's terms)."""
    L, D, H, Nq = length, config.hidden_size, config.head_dim, config.num_heads
    if mode == "full" or L <= window:
        return 2 * H * Nq * L**2
    evicted = L - window
    attention = 2 * H * Nq * window**2 + 2 * evicted * (2 * window * H * Nq)
    if mode == "ahn":
        attention += 2 * evicted * (2 * H**2 * Nq + _gate_projections(config) * D * Nq)
    return attention


def _gate_projections(config: ModelConfig) -> int:
    """The memory's D -> N projections: one per write gate and the output gate's. A model
    without an AHN type is costed as the paper's GDN."""
    return len(gate_names(config.ahn_type or "gdn")) + 1


def _projection_weights(config: ModelConfig) -> int:
    """q, k, v and o of one layer."""
    return 2 * config.hidden_size * config.head_dim * (config.num_heads + config.num_kv_heads)


def _layer_mixing(config: ModelConfig, length: int, mode: str, window: int) -> float:
    projections = 2 * length * _projection_weights(config)
    return projections + _layer_attention(config, length, mode, window)


def layer_split(config: ModelConfig) -> tuple[int, int]:
    """(layers kept as full attention, layers with window + memory)."""
    full = len(set(config.full_attention_layers))
    return full, config.num_layers - full


def _over_layers(per_layer, config: ModelConfig, length: int, mode: str, window: int) -> float:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "full" and window < 1:
        raise ValueError(f"mode {mode!r} needs window >= 1, got {window}")
    full_layers, memory_layers = layer_split(config)
    return full_layers * per_layer(config, length, "full", window) + (
        memory_layers * per_layer(config, length, mode, window)
    )


def mixing_flops(config: ModelConfig, length: int, mode: str, window: int = 0) -> float:
    """Token-mixing FLOPs of one sequence's forward pass over all layers (the paper's: the q, k,
    v, o projections and attention); `window` is the whole lossless memory W (window + sinks) for
    "swa" and "ahn"."""
    return _over_layers(_layer_mixing, config, length, mode, window)


def attention_flops(config: ModelConfig, length: int, mode: str, window: int = 0) -> float:
    """The part of `mixing_flops` that is not a weight matmul: scores, values and the memory."""
    return _over_layers(_layer_attention, config, length, mode, window)


def matmul_weights(config: ModelConfig) -> int:
    """The weights a token multiplies: q, k, v, o and the MLP per layer, and the head (tied or
    not; the embedding lookup is a gather)."""
    D = config.hidden_size
    per_layer = _projection_weights(config) + 3 * D * config.intermediate_size
    return config.num_layers * per_layer + config.vocab_size * D


def forward_flops(config: ModelConfig, length: int, mode: str, window: int = 0) -> float:
    """First-principles FLOPs of one sequence's forward pass: 2 L per matmul weight plus
    `attention_flops` (each matmul counted once, unlike the paper's `model_flops`)."""
    return attention_flops(config, length, mode, window) + 2 * length * matmul_weights(config)


def model_flops(
    config: ModelConfig, length: int, mode: str, window: int = 0, *, base_params: int
) -> float:
    """Mixing FLOPs + 2 L per base parameter: the paper's "model FLOPs" of one forward pass."""
    return mixing_flops(config, length, mode, window) + 2 * length * base_params


def distillation_step_flops(config: ModelConfig, length: int, window: int) -> float:
    """One sequence's work in a training step, first principles (recomputation not counted): the
    teacher's forward (full attention), the student's forward, and its backward to the
    activations: one more pass through each weight matmul (the frozen weights get no weight
    gradients; the AHN's own are ~0.3% of the model) and two through attention (dq, dk, dv and
    dp against scores and values)."""
    teacher = forward_flops(config, length, "full")
    student = forward_flops(config, length, "ahn", window)
    backward = 2 * length * matmul_weights(config) + 2 * attention_flops(
        config, length, "ahn", window
    )
    return teacher + student + backward


def full_attention_step_flops(config: ModelConfig, length: int) -> float:
    """One sequence's work in a training step of every weight under full attention (pretraining
    a base; recomputation not counted): the forward, and a backward that passes twice through
    each weight matmul (the activations' gradient and the weight's) and twice through attention
    (dq, dk, dv and dp against scores and values): three forwards. No window, no memory."""
    return 3 * forward_flops(config, length, "full")


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
    """A device's peak FLOP/s for MFU: the override when > 0, else the table's, else None."""
    if override > 0:
        return override
    return PEAK_FLOPS.get(device_kind)
