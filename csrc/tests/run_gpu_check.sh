#!/usr/bin/env bash
# One prepared GPU check: build the shims, compare every CUDA kernel with its CPU kernel, time them.
# Usage (on a machine with nvcc, g++ and a CUDA torch): bash csrc/tests/run_gpu_check.sh [peak GB/s]
# Writes csrc/tests/gpu_results.json (or $OUT/gpu_results.json when OUT is set).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
peak="${1:-4800}"   # H200 SXM HBM3e; H100 SXM: 3350
arch="sm_$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
python "$here/harness.py" --arch "$arch" --peak-gbs "$peak" --json "${OUT:-$here}/gpu_results.json"
