"""Peak resident memory of checkpoint conversion, against the checkpoint's size.

Writes a Qwen2 checkpoint of a few hundred MB with transformers (sharded, as real ones are), then
runs each step in a fresh process: `convert` HF -> Orbax, `convert --to_hf` back, and
`from_pretrained` of both. Each process imports the modules and touches JAX first, then resets
its peak-RSS counter (Linux: `5 > /proc/self/clear_refs`), so the step's own peak is measured
apart from the fixed cost of Python + JAX + Orbax, which is reported too.

  python bench/convert_memory.py [--layers=6] [--dtype=float32|bfloat16]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _paths  # noqa: F401  - must precede any import of `kernels`; see bench/_paths.py
from absl import app, flags  # noqa: E402
from common import machine, write_result  # noqa: E402

FLAGS = flags.FLAGS

PRELUDE = """
import ahn_jax, ahn_jax.convert, jax, jax.numpy as jnp, orbax.checkpoint
jnp.zeros(1).block_until_ready()
def vm(key):
    line = next(l for l in open('/proc/self/status') if l.startswith(key))
    return int(line.split()[1])
before_hwm = vm('VmHWM:')
open('/proc/self/clear_refs', 'w').write('5')
base = vm('VmRSS:')
"""
REPORT = "\nprint('RSS', before_hwm, base, vm('VmHWM:'))"


def measure(step: str) -> tuple[float, float, float]:
    """(peak RSS of imports, RSS before the step, peak RSS during the step), MiB, fresh process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + step + REPORT],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RSS"))
    import_peak, base, peak = (int(x) / 1024 for x in line.split()[1:])
    return import_peak, base, peak


def define_flags() -> None:
    flags.DEFINE_integer("layers", 6, "decoder layers of the Qwen2 checkpoint written")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "the checkpoint's dtype")


def main(argv) -> None:
    del argv

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=16384,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=FLAGS.layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Qwen2ForCausalLM(config).to(getattr(torch, FLAGS.dtype))
        model.save_pretrained(tmp / "hf", max_shard_size="150MB")
        n_params = sum(p.numel() for p in model.parameters())
        del model
        size_mib = sum(f.stat().st_size for f in (tmp / "hf").glob("*.safetensors")) / 2**20
        hf, ckpt, back = tmp / "hf", tmp / "ckpt", tmp / "back"
        steps = {
            "convert HF -> Orbax": f"ahn_jax.convert.main(['--hf_dir', '{hf}', '--out', '{ckpt}'])",
            "convert --to_hf (Orbax -> HF)": f"ahn_jax.convert.main(['--to_hf', '--ckpt', "
            f"'{ckpt}', '--out', '{back}'])",
            "from_pretrained(HF dir)": f"m = ahn_jax.from_pretrained('{hf}')",
            "from_pretrained(Orbax)": f"m = ahn_jax.from_pretrained('{ckpt}')",
        }
        rows = {}
        for name, code in steps.items():
            import_peak, base, peak = measure(code)
            rows[name] = {"import_peak": import_peak, "base": base, "peak": peak}
            print(f"{name:32s} step peak {peak - base:7.0f} MiB above {base:.0f}", flush=True)
    print(
        f"\ncheckpoint: {n_params:,} parameters, {size_mib:.0f} MiB of safetensors ({FLAGS.dtype})"
    )
    print(
        "| step | RSS before | peak during | peak - before | / checkpoint |\n|---|---|---|---|---|"
    )
    for name, r in rows.items():
        extra = r["peak"] - r["base"]
        print(
            f"| {name} | {r['base']:.0f} | {r['peak']:.0f} | {extra:.0f} | {extra / size_mib:.2f} |"
        )
    write_result(
        "convert_memory",
        {
            "benchmark": "convert_memory",
            "machine": machine(),
            "params": n_params,
            "dtype": FLAGS.dtype,
            "checkpoint_mib": size_mib,
            "rss_mib": rows,
        },
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
