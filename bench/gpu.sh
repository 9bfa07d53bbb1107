#!/usr/bin/env bash
# The GPU run, ready to go: on a machine with a CUDA GPU (and no network), build bd_kernels for
# this GPU, run the CUDA tests, benchmark the kernels against the measured device-to-device copy
# bandwidth, measure paper-preset training throughput of PreAct-ResNet18 (bf16, channels_last),
# run one defense per family on a model trained there, and write bench/RESULTS-gpu.md naming
# the device. About 10 minutes on an H100/H200.
#
#   bash bench/gpu.sh            # PYTHON=python3 by default; BD_GPU_SMOKE=1 for a 1-minute check
#
# Uses only what the machine's Python already has (torch, torchvision, safetensors, rich, typer,
# pandas, matplotlib, pytest, pytest-benchmark, hypothesis): the bd packages go on PYTHONPATH and
# the extension is built in place, nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/packages/bd-kernels/src:$PWD/packages/bd-core/src:$PWD/packages/bd-defenses/src:$PWD/packages/bd-cli/src"
export BD_PROGRESS=0 BD_CACHE="$OUT/cache"
ARCH=$($PY -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}

echo "== build bd_kernels for sm_${ARCH/./} =="
start=$(date +%s)
(cd packages/bd-kernels && FORCE_CUDA=1 $PY setup.py -q build_ext --inplace) > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s" | tee "$OUT/build-time.txt"

echo "== CUDA tests =="
$PY -m pytest -q -p no:cacheprovider -o addopts= tests/bd_kernels 2>&1 | tee "$OUT/cuda-tests.txt" | tail -3

echo "== kernel benchmarks =="
$PY -m pytest -q -p no:cacheprovider -o addopts= bench/test_kernels.py --benchmark-only \
  --benchmark-json="$OUT/kernels.json" > "$OUT/kernels.txt" 2>&1 || { tail -20 "$OUT/kernels.txt"; exit 1; }

echo "== training throughput and defenses =="
$PY bench/gpu_bench.py --out "$OUT" ${BD_GPU_SMOKE:+--smoke}

$PY bench/gpu_report.py "$OUT" bench/RESULTS-gpu.md
echo "wrote bench/RESULTS-gpu.md"
