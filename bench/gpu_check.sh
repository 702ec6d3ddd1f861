#!/usr/bin/env bash
# The one prepared script for a GPU machine (../shared/gpu.md says how to bring CIFAR-10 and the wheels):
#   bash bench/gpu_check.sh                  # on the GPU machine: ~8 minutes on an H100/H200
#   bash bench/gpu_check.sh --smoke          # dry run on a CPU with a tiny model
# Env: TCL_DATA (CIFAR-10 in hub layout), TCL_LABELS (the reference's sym_noise_cifar10_50.npy).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # What the GPU machine lacks (datasets, wrapt, ...): installed aside, without touching its own packages.
  python3 -m pip install -q --no-index --no-deps --target /root/site .whl/*.whl
  export PYTHONPATH="/root/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
data=${TCL_DATA:-/root/data/cifar10}
labels=${TCL_LABELS:-$data/sym_noise_cifar10_50.npy}
python3 bench/gpu_check.py --data-path "$data" --labels "$labels" "$@"
