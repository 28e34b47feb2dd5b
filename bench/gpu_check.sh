#!/usr/bin/env bash
# The accelerator issue's GPU check (#20 item 7) as one command for a lent GPU machine, whose own
# preinstalled jax / flax / optax / orbax it uses (no network there; `PYTHONPATH=.` as the earlier
# GPU rows of docs/benchmarks.md ran):
#   1. GDN: the in-scan "chunked" layout against the accelerator-shaped "batched" one (target:
#      >= 5x), and fla's Triton kernel if it imports (bench/gdn_layouts.py);
#   2. the distillation step against a plain training step (target: <= 2x; bench/train_step.py);
#   3. a Qwen2.5-3B-shaped model, random bf16 weights: prefill and decode tokens/s and memory at
#      32k / 64k / 128k for full, swa and ahn (bench/long_context.py).
# Each part has its own time limit (the machine's time is counted), prints its table and keeps
# its log and JSON in OUT (default $OUT, else bench/results).
#
#   bash bench/gpu_check.sh [OUT]
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}}
mkdir -p "$out" bench/results
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # memory_stats then shows what each run holds

part() {  # part NAME SECONDS SCRIPT ARGS...: run it, keep its log, show its table
  local name=$1 seconds=$2
  shift 2
  echo "== $name (limit ${seconds} s): $*"
  local start=$SECONDS
  timeout "$seconds" python3 "$@" >"$out/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - start)) s"
  grep -E '^\||^fla:|^not started|Error' "$out/$name.log" | tail -30
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
part gdn_layouts 150 bench/gdn_layouts.py --lengths=8192,16384,32768 --repeats=3
part train_step 150 bench/train_step.py --models=50m --lengths=8192 --repeats=2
part long_context 270 bench/long_context.py --budget_s=200
cp bench/results/*.json "$out"/ 2>/dev/null
exit 0
