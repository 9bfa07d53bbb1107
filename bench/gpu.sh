#!/usr/bin/env bash
# The GPU run, ready to go: on a machine with a CUDA GPU (and no network), build bd_kernels for
# this GPU, check that its errors reach Python, run its CPU tests and its CUDA tests (those under
# compute-sanitizer's memcheck: out-of-bounds accesses), benchmark the kernels against the
# measured device-to-device copy bandwidth, measure paper-preset training throughput of
# PreAct-ResNet18 (bf16, channels_last), and run one defense per family on a model trained there
# until the time budget is spent. Writes
# at most 8 flat files to $OUT (what a device lease sends back) and bench/RESULTS-gpu.md.
#
#   bash bench/gpu.sh                 # PYTHON=python3, OUT=bench/gpu-out, BUDGET_S=480 by default
#   python3 bench/gpu_report.py OUT bench/RESULTS-gpu.md    # the report again, from OUT's files
#
# Uses only what the machine's Python already has (torch, torchvision, safetensors, rich, typer,
# pandas, matplotlib, pytest, pytest-benchmark, hypothesis): the bd packages go on PYTHONPATH and
# the extension is built in place, nothing is downloaded. Every stage has its own time limit, so
# one that hangs costs its slot, not the run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/gpu-out}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"
began=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - began) )); }
export PYTHONPATH="$PWD/packages/bd-kernels/src:$PWD/packages/bd-core/src:$PWD/packages/bd-defenses/src:$PWD/packages/bd-cli/src"
export BD_PROGRESS=0 BD_CACHE=/tmp/bd-gpu-cache PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
ARCH=$($PY -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")') \
  || { echo "no CUDA device visible to $PY"; exit 1; }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}

echo "== build bd_kernels for sm_${ARCH/./} =="
# in place, for this GPU, by the compiler CXX names (cpp_extension's default: c++)
build_extension() { (cd packages/bd-kernels && rm -rf build && FORCE_CUDA=1 timeout 240 $PY setup.py -q build_ext --inplace); }
start=$(date +%s)
build_extension > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
{
  echo "built in $(( $(date +%s) - start )) s"
  $PY -c 'import bd_kernels, json; print(json.dumps(bd_kernels.build_info()))'
  cxx=$(grep -v nvcc "$OUT/build.log" | sed -n 's/^\[[0-9]*\/[0-9]*\] \([^ ]*\).*/\1/p' | head -1)
  echo "C++ compiler: $cxx ($($cxx --version 2>/dev/null | head -1))"
  $PY -c 'import torch; print(" ".join(torch.__config__.show().split("\n")[1:3]))'
} 2>&1 | tee "$OUT/build-time.txt"

echo "== errors raised by the extension reach Python =="
# SIGSEGV on the H200 of 2026-12-04: its relocated g++ linked libstdc++ statically into the extension
# (bench/RESULTS.md; setup.py now links the shared one and checks). On a crash: a backtrace and the
# loaded C++ runtimes
GDB=$(command -v gdb || command -v cuda-gdb || ls /usr/local/cuda*/bin/cuda-gdb 2>/dev/null | head -1)
timeout 60 $PY bench/gpu_exception_check.py > "$OUT/cuda-tests.txt" 2>&1
raised=$?  # 0: every check raised into Python
if [ $raised -ne 0 ] && [ -n "$GDB" ]; then
  timeout 120 "$GDB" -q -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY bench/gpu_exception_check.py 2>&1 \
    | grep -E "^#|SIGSEGV|signal|libstdc|libgcc_s|_C\.cpython|libc10\.so" | head -60 >> "$OUT/cuda-tests.txt"
fi
tail -2 "$OUT/cuda-tests.txt"
# BD_GPU_CHECK_ONLY=1: stop here (a short lease spent on the diagnosis alone)
[ -z "${BD_GPU_CHECK_ONLY:-}" ] || exit 0

echo "== the CPU tests of the same build (the CUDA ones run under memcheck below) =="
# in xdist workers (when the plugin is there): a crashing test then fails alone
XDIST=$($PY -c 'import xdist' 2>/dev/null && echo "-n 4")
timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts= -m "not cuda" $XDIST tests/bd_kernels \
  >> "$OUT/cuda-tests.txt" 2>&1
grep -E "^[0-9]+ (passed|failed)|FAILED|crashed" "$OUT/cuda-tests.txt" | tail -6

echo "== kernel benchmarks =="
timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts= bench/test_kernels.py --benchmark-only \
  --benchmark-json="$OUT/kernels.json" > "$OUT/kernels.txt" 2>&1
tail -3 "$OUT/kernels.txt"

echo "== CUDA tests under compute-sanitizer memcheck =="
# the one run of the CUDA tests: memcheck finds out-of-bounds accesses; without it, a plain run
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
[ -n "$SANITIZER" ] || echo "compute-sanitizer not found: the CUDA tests run without it" > "$OUT/memcheck.txt"
timeout 150 ${SANITIZER:+"$SANITIZER" --tool memcheck --error-exitcode 7 --target-processes all} \
  $PY -m pytest -q -p no:cacheprovider -o addopts= -m cuda tests/bd_kernels >> "$OUT/memcheck.txt" 2>&1
echo "exit status $?" | tee -a "$OUT/memcheck.txt"
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.txt" | tail -3

echo "== training throughput and defenses ($(left) s left) =="
$PY bench/gpu_bench.py --out "$OUT" --seconds "$(( $(left) - 20 ))" ${BD_GPU_SMOKE:+--smoke}

$PY bench/gpu_report.py "$OUT" bench/RESULTS-gpu.md
echo "wrote bench/RESULTS-gpu.md in $(( $(date +%s) - began )) s"
