#!/usr/bin/env bash
# Environment for ahn_jax training on TPU VM workers; `source launch/env.sh` before the run.
# Every value can be overridden by exporting it first, JAX_PLATFORMS through JAX_PLATFORMS_TPU.

# The accelerator, not the CPU (our tests force JAX_PLATFORMS=cpu; a pod must not inherit that).
export JAX_PLATFORMS="${JAX_PLATFORMS_TPU:-tpu}"
# Compiled programs are cached across restarts: a preempted run resumes without recompiling.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/jax_compilation}"
# XLA:TPU flags that overlap the FSDP all-gathers and reduce-scatters with compute (the flags
# MaxText sets for FSDP training on v4/v5).
export LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS:---xla_tpu_enable_async_collective_fusion=true \
--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true \
--xla_tpu_enable_async_collective_fusion_multiple_steps=true \
--xla_tpu_overlap_compute_collective_tc=true --xla_enable_async_all_gather=true}"
# Python output unbuffered so that logs fetched mid-run are current.
export PYTHONUNBUFFERED=1
