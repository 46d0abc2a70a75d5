#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py), as run on a GPU machine: needs only the machine's
# torch and lightning (plus hydra-core and omegaconf) and this working tree; a few minutes.
#   bash benchmarks/gpu_check.sh                 # on the first CUDA GPU
#   bash benchmarks/gpu_check.sh --device cpu    # the same checks on the CPU
# The JSON result goes to ${OUT:-benchmarks/results}/gpu_check.json; PYTHON names the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec "${PYTHON:-python3}" -m benchmarks.gpu_check --out "${OUT:-benchmarks/results}/gpu_check.json" "$@"
