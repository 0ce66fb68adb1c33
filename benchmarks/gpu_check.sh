#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): on a machine with one CUDA GPU, the engine at paper size
# (paper-width U-Net, 600 x 512 x 512, both maps at the bottleneck, fp32 and bf16, engine vs floor vs
# pytorch-grad-cam per slice, peak GPU memory) and an nnU-Net 3d_fullres volume; prints ONE JSON line.
# Refuses (exit 2) without CUDA. --dry-run: tiny sizes on the CPU, to check the script end to end.
#
#   benchmarks/gpu_check.sh [--dry-run] [--rounds 3] [--subset 8] [--work DIR] [--no-nnunet] > gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/SegHiResCAM${PYTHONPATH:+:$PYTHONPATH}"
status=0
timeout 300 "${PYTHON:-python}" benchmarks/gpu_check.py "$@" || status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check: stopped after 5 minutes (the check is meant to take less); no result" >&2
fi
exit "$status"
