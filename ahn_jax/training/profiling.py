"""How fast the train step runs: an MFU estimate, and JAX profiler traces of chosen steps."""

from __future__ import annotations

from pathlib import Path

import jax
from absl import logging

from ahn_jax.config import ModelConfig
from ahn_jax.costs import formulas


class Utilization:
    """Model FLOP/s of a step on the padded length, each matmul counted once (distillation:
    teacher forward + student forward and backward, `formulas.distillation_step_flops`;
    pretraining: forward and backward of every weight under full attention,
    `formulas.full_attention_step_flops`) and, where the device's peak is known, MFU = that /
    (peak x devices)."""

    def __init__(self, config: ModelConfig, devices: int, peak_override: float = 0.0):
        self.config = config
        self.devices = devices  # the devices the step runs on (the mesh's, else one)
        self.peak = formulas.peak_flops(jax.devices()[0].device_kind, peak_override)

    def of_step(self, rows: int, length: int, lossless: int | None, seconds: float) -> dict:
        """FLOP/s (and MFU) of a step of `rows` sequences padded to `length` with `lossless`
        = W + S tokens kept exactly (one value for all rows: the loop passes their mean), or
        None for a full-attention step (pretraining: no window, no memory)."""
        if lossless is None:
            per_row = formulas.full_attention_step_flops(self.config, length)
        else:
            per_row = formulas.distillation_step_flops(self.config, length, lossless)
        work = rows * per_row
        rate = work / seconds
        stats = {"model_tflops_per_s": rate / 1e12}
        if self.peak:
            stats["mfu"] = rate / (self.peak * self.devices)
        return stats


class Profile:
    """A JAX profiler trace of steps first..last (`train.profile_steps`), for TensorBoard's
    profile plugin or Perfetto."""

    def __init__(self, directory: Path, steps: tuple[int, ...]):
        self.directory = directory
        self.first, self.last = steps if steps else (0, -1)
        self.active = False

    def before(self, step: int) -> None:
        if step == self.first:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int) -> None:
        if self.active and step == self.last:
            self.close()
            logging.warning("profiler trace of steps %d-%d in %s", self.first, self.last,
                            self.directory)  # fmt: skip

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
