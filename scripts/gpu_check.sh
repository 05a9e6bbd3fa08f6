#!/usr/bin/env bash
# The one prepared GPU check, for a machine with a GPU, nvcc and a
# CUDA build of torch (Horovod and TensorFlow not needed):
#   1. builds the torch ops and libscalecom_cuda.so in place (sm_90 unless
#      HOROVOD_SCALECOM_CUDA_ARCHS says otherwise),
#   2. the kernels against the CPU core, bit for bit, through torch's CUDA
#      dispatch of torch.ops.scalecom (tests/gpu), and the binding's checks
#      through the C ABI's host double (tests/test_cuda_abi.py),
#   3. times the kernels against torch.topk + index ops and the copy bound.
# Writes its logs and figures to $OUT (or ./gpu-check) and exits non-zero if a
# test fails; the timing still runs so that one call gives both.
#   OUT=/tmp/out bash scripts/gpu_check.sh
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HOROVOD_SCALECOM_CUDA=1
export HOROVOD_SCALECOM_CUDA_ARCHS=${HOROVOD_SCALECOM_CUDA_ARCHS:-90}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -n 2
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/machine.txt"

echo "[gpu_check] build"
MAX_JOBS=$(nproc) "$PY" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 \
  || { tail -n 40 "$OUT/build.log"; exit 1; }

echo "[gpu_check] tests"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/gpu/test_kernels.py tests/test_cuda_abi.py \
  2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}

echo "[gpu_check] timing"
"$PY" tests/gpu/bench_kernels.py --json "$OUT/bench_kernels.json" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "[gpu_check] tests exit $tests, timing exit $bench"
exit $(( tests || bench ))
