#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (under five minutes on one H100/H200):
# the CUDA tests, then the engine benchmark on the GPU. Run from the repo root in a venv
# where orstream is installed with a CUDA build of torch (and, for TensorRT,
# `pip install 'orstream[tensorrt]'`).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
python - <<'PY'
import sys

import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch; run it on a CUDA machine")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
python -m pytest -q -m cuda -rs 2>&1 | tee "$out/cuda_tests.txt"
python -m orstream.benchmarks.engines --devices cuda --variants unet_xs,unet_s \
    --sizes 512x640,1024x1280 --backends torch,compile,tensorrt --rounds 3 --iters 30 \
    --out "$out" 2>&1 | tee "$out/engines.txt"
