#!/bin/bash
# BMQA on a Cloud TPU VM slice: the same command on every worker.
#
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu/train.sh setup
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu/train.sh \
#       configs/mliq.py:img=vit_b32,txt=transformer,data=manifest,manifest=/mnt/shared/mliq/manifest.csv \
#       /mnt/shared/runs/mliq_vit_transf
#
# `setup` copies this checkout's tracked files to every worker (~/bmqa_jax) and installs it with
# jax[tpu]. Training runs launch/train.py --multihost on all workers at once;
# jax.distributed.initialize() finds the slice from the TPU metadata. The
# workdir and the data must be on a filesystem every worker mounts (Filestore,
# NFS); running the same command again resumes.
set -euo pipefail
: "${TPU:?set TPU=<tpu name>}" "${ZONE:?set ZONE=<zone>}"
REPO="${REPO:-bmqa_jax}"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all --command="$1"
}
if [[ "${1:-}" == "setup" ]]; then
  tgz="$(mktemp -d)/bmqa_jax.tgz"
  (cd "$(git rev-parse --show-toplevel)" && git ls-files -z | tar czf "${tgz}" --null -T -)
  gcloud compute tpus tpu-vm scp --zone="${ZONE}" --worker=all "${tgz}" "${TPU}:~/"
  ssh_all "mkdir -p ~/${REPO} && tar xzf ~/bmqa_jax.tgz -C ~/${REPO} && cd ~/${REPO} && python3 -m pip install -q -e . 'jax[tpu]'"
  exit 0
fi
CONFIG="${1:?usage: train.sh CONFIG WORKDIR | setup}"
WORKDIR="${2:?usage: train.sh CONFIG WORKDIR | setup}"
ssh_all "cd ~/${REPO} && python3 launch/train.py --multihost --config='${CONFIG}' --workdir='${WORKDIR}'"
