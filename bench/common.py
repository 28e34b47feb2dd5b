"""Shared bits of the benchmarks: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:  # no git on the machine (a bare accelerator host)
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit,
    }


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def best_seconds(fn, *args, repeats: int) -> float:
    """Fastest of `repeats` timed calls of fn(*args), after one call that compiles and warms up."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def device_and_dtype():
    """The first device and the dtype models run in there (fp32 on a CPU, bf16 on an
    accelerator), announced on stdout."""
    import jax

    device = jax.devices()[0]
    dtype = "float32" if device.platform == "cpu" else "bfloat16"
    print(f"{device.device_kind}, jax {jax.__version__}, {dtype}", flush=True)
    return device, dtype


def check_known(flag: str, given, known) -> None:
    """A usage error naming `--flag` when a comma-list flag holds names outside `known`."""
    from absl import app

    unknown = [name for name in given if name not in known]
    if unknown:
        raise app.UsageError(f"--{flag}: unknown {unknown}; choose from {sorted(known)}")
