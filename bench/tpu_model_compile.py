"""The whole train step and decode step compiled for real TPU slices from this CPU host, with the
Pallas kernels and with the XLA path side by side (`python -m ahn_jax.compile_check`, one
subprocess per compile: libtpu serves one process at a time and each compile's host memory is
returned). Nothing runs on a TPU: the figures are XLA:TPU's per-chip memory analysis and cost
analysis, and the compile's wall time here.

  python bench/tpu_model_compile.py [--configs=qwen3b_gdn,...] [--topologies=v5p-8,v6e-8]
      [--seq_len=24576] [--smallest] [--baseline] [--decode_batches=1,16,64]

--smallest also tries the slices below (v5e-4, v6e-4, v5e-8) with the Pallas kernels and names the
first that fits; --baseline adds the full-attention baseline (plain training of every weight,
next-token CE, objective "pretrain") of the same base; the decode rows compile Qwen2.5-3B's
decode step with S + W = 32,768 slots on a v5e-8. Each row is printed as a markdown table row and
appended to bench/results/tpu_model_compile.jsonl as it finishes (a long run loses nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags
from common import RESULTS, check_known, machine

ROOT = Path(__file__).parents[1]
CONFIGS = ("qwen3b_gdn", "qwen3b_dn", "qwen3b_mamba2", "qwen7b_gdn", "qwen14b_gdn")
SMALLER = ("v5e-4", "v6e-4", "v5e-8")  # by HBM in all: 64, 128, 128 GiB
OUT = RESULTS / "tpu_model_compile.jsonl"

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("configs", list(CONFIGS), "configs/<name>.py to compile")
    flags.DEFINE_list("topologies", ["v5p-8", "v6e-8"], "slices for both kernel choices")
    flags.DEFINE_list("kernels", ["pallas", "xla"], "kernel choices to compare")
    flags.DEFINE_integer("seq_len", 24576, "tokens per sequence")
    flags.DEFINE_integer("batch_size", 0, "global batch (0: one sequence per chip)")
    flags.DEFINE_bool("smallest", False, "also find the smallest slice that fits (Pallas)")
    flags.DEFINE_bool("baseline", False, "add the full-attention baseline")
    flags.DEFINE_list("decode_batches", ["1", "16", "64"], "decode step batches (3B, v5e-8)")
    flags.DEFINE_integer("timeout", 1800, "seconds per compile")
    flags.DEFINE_bool("table", False, "only print the table of the recorded rows")


CHIPS = {"v5p-8": 4, "v6e-8": 8, "v5e-8": 8, "v5e-4": 4, "v6e-4": 4}


def compile_check(config: str, topology: str, *extra: str) -> dict:
    command = [sys.executable, "-m", "ahn_jax.compile_check", f"--config=configs/{config}.py",
               f"--topology={topology}", "--json", *extra]  # fmt: skip
    start = time.perf_counter()
    try:
        # compiles only, one at a time: libtpu's lockfile (meant for a chip) need not serialise us
        env = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=FLAGS.timeout, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"config": config, "topology": topology, "error": f"over {FLAGS.timeout} s"}
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"config": config, "topology": topology, "error": " | ".join(tail)[:400]}
    return {"config": config, "wall_seconds": round(wall, 1), **json.loads(lines[-1])}


def record(row: dict) -> dict:
    RESULTS.mkdir(exist_ok=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(summary(row), flush=True)
    return row


def gib(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def summary(row: dict) -> str:
    what = row.get("kernels", "")
    if row.get("objective") == "pretrain":
        what = "full-attention baseline (all weights trained)"
    if row.get("step") == "decode":
        what = f"decode B={row['batch_size']}"
    if "peak_bytes_per_chip" not in row:
        error = row.get("error", "")
        overflow = row.get("fits") is False or "RESOURCE_EXHAUSTED" in error
        if overflow and "HLO temporaries" in error:  # XLA:TPU's figure is the useful part
            error = error[error.index("HLO temporaries") :]
        verdict = "**does not fit**" if overflow else "error"
        where = f"| {row['config']} | {row['topology']} | {what} |"
        return f"{where} {verdict}: {error[:110]} | | | | |"
    fits = "" if row["fits"] else " **does not fit**"
    return (
        f"| {row['config']} | {row['topology']} | {what} | {gib(row['peak_bytes_per_chip'])} "
        f"(of {gib(row['hbm_bytes_per_chip'])}){fits} | {gib(row['temp_bytes'])} | "
        f"{row['flops_per_chip']:.3g} | {row['bytes_accessed_per_chip']:.3g} | "
        f"{row['compile_seconds']} |"
    )


def train_rows(config: str):
    for topology in FLAGS.topologies:
        batch = FLAGS.batch_size or CHIPS.get(topology, 4)
        common = [f"--seq_len={FLAGS.seq_len}", f"--batch_size={batch}"]
        for kernels in FLAGS.kernels:
            yield compile_check(config, topology, f"--kernels={kernels}", *common)
        if FLAGS.baseline:
            yield compile_check(
                config,
                topology,
                *common,
                "--config.train.objective=pretrain",
                "--config.model.param_dtype=float32",
            )  # as train requires
    if FLAGS.smallest:
        for topology in SMALLER:
            batch = FLAGS.batch_size or CHIPS[topology]
            row = compile_check(config, topology, "--kernels=pallas",
                                f"--seq_len={FLAGS.seq_len}", f"--batch_size={batch}")  # fmt: skip
            yield row
            if row.get("fits"):
                break


HEADER = ("| config | slice | kernels | peak GiB per chip | temporaries GiB | FLOPs per chip | "
          "bytes per chip | compile s |\n|---|---|---|---|---|---|---|---|")  # fmt: skip


def main(argv) -> None:
    del argv
    if FLAGS.table:  # the table of the rows recorded so far
        print(HEADER)
        for line in OUT.read_text().splitlines():
            print(summary(json.loads(line)))
        return
    check_known("configs", FLAGS.configs, CONFIGS)
    print(f"machine: {machine()}")
    print(HEADER)
    for config in FLAGS.configs:
        for row in train_rows(config):
            record(row)
    for batch in FLAGS.decode_batches:
        record(compile_check("qwen3b_gdn", "v5e-8", "--step=decode", f"--batch_size={batch}",
                             "--window=32640", "--sinks=128"))  # fmt: skip


if __name__ == "__main__":
    define_flags()
    app.run(main)
