#!/usr/bin/env bash
# One idempotent setup for horovod-scalecom on a Debian machine:
#   Open MPI (Debian) -> .venv -> torch, TensorFlow, mpi4py, pytest -> Horovod
#   (built for PyTorch, TensorFlow, MPI, Gloo) -> this package and its C++ op.
# Each step is skipped when its result is already there, so a second run on a
# ready machine takes seconds. On failure it names the step and what to try.
#
# Needs: Debian or Ubuntu, Python 3.9-3.11 (TensorFlow 2.15 has no wheels for
# later ones), root or sudo for apt-get. Settings, all optional:
#   PYTHON=python3.11       the interpreter the venv is made from (default python3)
#   SCALECOM_GPU=1          GPU mode: torch with CUDA, Horovod with NCCL
#                           (HOROVOD_GPU_OPERATIONS=NCCL) and ScaleCom's CUDA
#                           kernels; needs the CUDA toolkit (nvcc on PATH or in
#                           CUDA_HOME) and an NVIDIA driver
#   SCALECOM_TORCH_INDEX=URL  a wheel index to try first for torch; default:
#                           torch's CPU-only index (GPU mode: none), so a CPU
#                           machine gets the CPU build, not PyPI's CUDA one;
#                           when it cannot serve torch, pip's own indexes are
#                           used as without it; empty: pip's indexes only
#   HOROVOD_SCALECOM_CUDA=0 build no CUDA kernels (setup.py)
set -euo pipefail
export TF_CPP_MIN_LOG_LEVEL=3  # TensorFlow start-up chatter, not our business
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON=${PYTHON:-python3}
GPU=${SCALECOM_GPU:-0}
if [ "$GPU" = 1 ]; then
  SCALECOM_TORCH_INDEX=${SCALECOM_TORCH_INDEX-}
else
  SCALECOM_TORCH_INDEX=${SCALECOM_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
fi

TORCH_VERSION=2.13.0
TF_VERSION=2.15.1
NUMPY_VERSION=1.26.4
SKLEARN_VERSION=1.9.1
MNIST1D_VERSION=0.0.2.post1
LIGHTNING_VERSION=2.6.6
ACCELERATE_VERSION=1.16.0
RAY_VERSION=2.60.0
# pyarrow (Ray Train) 20 and later need numpy 2; TensorFlow 2.15 needs numpy 1.
PYARROW_VERSION=19.0.1
MPI4PY_VERSION=4.1.2
HOROVOD_VERSION=0.28.1
# Headers only, for the ring engine's binding (horovod_scalecom._ring).
PYBIND11_VERSION=3.1.0

step() { CURRENT_STEP="$1"; printf '\n[setup] %s\n' "$1"; }
fail() {
  printf '\n[setup] FAILED at step: %s\n[setup] %s\n' "$CURRENT_STEP" "$1" >&2
  exit 1
}
trap 'fail "see the output above; fix the cause and run scripts/setup.sh again (finished steps are skipped)."' ERR

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "Python 3.9-3.11 ($PYTHON, or the one .venv was made with)"
# TensorFlow 2.15 publishes wheels for Python 3.9-3.11 only.
[ -x "$PY" ] && PYTHON="$PY"
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install Python 3.11 (Debian 12: apt-get install python3), or name one with PYTHON=..."
"$PYTHON" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))' \
  || fail "$("$PYTHON" --version 2>&1) is outside 3.9-3.11, which TensorFlow 2.15 needs: install python3.11 and run PYTHON=python3.11 bash scripts/setup.sh (remove .venv first if it was made with another version)"
"$PYTHON" --version

step "Open MPI, a C++17 compiler and CMake from Debian (libopenmpi-dev, openmpi-bin, g++, cmake)"
if dpkg -s libopenmpi-dev openmpi-bin g++ cmake >/dev/null 2>&1 && command -v mpirun >/dev/null; then
  echo "already installed: $(mpirun --version | head -n1), $(g++ --version | head -n1)"
else
  as_root apt-get update -q || fail "apt-get update failed: check the network to the Debian mirror"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q libopenmpi-dev openmpi-bin g++ cmake \
    || fail "apt-get install libopenmpi-dev openmpi-bin g++ cmake failed"
fi

if [ "$GPU" = 1 ]; then
  step "GPU mode: the CUDA toolkit"
  NVCC=$(command -v nvcc || true)
  [ -n "$NVCC" ] || { [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; }
  [ -n "$NVCC" ] || fail "GPU mode needs the CUDA toolkit: put nvcc on PATH or set CUDA_HOME (NVIDIA's cuda-toolkit packages)"
  export PATH="$(dirname "$NVCC"):$PATH" CUDA_HOME="$(dirname "$(dirname "$NVCC")")"
  "$NVCC" --version | tail -n 1
  command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "nvidia-smi not found: building anyway, but nothing can run on a GPU without the NVIDIA driver"
fi

step "virtual environment in $VENV"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV" \
  || fail "$PYTHON -m venv failed: install python3-venv (and python3-dev for the headers the builds need)"
"$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || fail "Python's headers (Python.h) are missing: apt-get install python3-dev (or python3.X-dev for the version in use)"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
have() { "$PY" - "$@" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    # A build label (torch's 2.13.0+cpu) is the same release.
    assert version(name).split("+")[0] == want, spec
PYEOF
}

torch_has_cuda() { "$PY" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; }
step "torch $TORCH_VERSION ($([ "$GPU" = 1 ] && echo CUDA || echo CPU)), TensorFlow $TF_VERSION, numpy $NUMPY_VERSION, pytest"
if [ "$GPU" = 1 ] && have torch==$TORCH_VERSION && ! torch_has_cuda; then
  echo "the installed torch is a CPU build; replacing it for GPU mode"
  "$PY" -m pip uninstall -y -q torch
fi
if have torch==$TORCH_VERSION tensorflow==$TF_VERSION numpy==$NUMPY_VERSION; then
  echo "already installed"
else
  pip_install --upgrade pip setuptools wheel
  if [ -n "${SCALECOM_TORCH_INDEX:-}" ]; then
    # Only torch from that index, with short network limits: an index that is
    # unreachable or lacks this version costs seconds, and the plain install
    # below then takes torch from pip's own indexes.
    # A local build label (2.13.0+cpu, +cu128) ranks above PyPI's plain
    # 2.13.0, so pip takes that index's torch when it has one.
    pip_install --retries 1 --timeout 15 --extra-index-url "$SCALECOM_TORCH_INDEX" "torch==$TORCH_VERSION" \
      || echo "[setup] $SCALECOM_TORCH_INDEX did not serve torch $TORCH_VERSION; using pip's own indexes"
  fi
  pip_install "torch==$TORCH_VERSION" "tensorflow==$TF_VERSION" "numpy==$NUMPY_VERSION" \
    || fail "pip could not install torch/tensorflow; is PyPI reachable?"
fi
if [ "$GPU" = 1 ]; then
  torch_has_cuda || fail "GPU mode: pip installed a CPU build of torch ($("$PY" -c 'import torch; print(torch.__version__)')); uninstall it ($PY -m pip uninstall -y torch) and name torch's CUDA index, e.g. SCALECOM_TORCH_INDEX=https://download.pytorch.org/whl/cu128"
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count())"
fi
"$PY" -c "import pytest, packaging" 2>/dev/null || pip_install pytest packaging
# scikit-learn ships the real data (8x8 digits) of the convergence study and
# examples/pytorch_digits.py inside the package: nothing is downloaded.
"$PY" -c "import sklearn" 2>/dev/null || pip_install "scikit-learn==$SKLEARN_VERSION" \
  || fail "pip could not install scikit-learn; is PyPI reachable?"
# mnist1d generates the study's second data set (MNIST-1D) from templates it
# ships (make_dataset; its download is never used).
have mnist1d==$MNIST1D_VERSION || pip_install "mnist1d==$MNIST1D_VERSION" \
  || fail "pip could not install mnist1d; is PyPI reachable?"

# Where PyTorch users train today: the DDP hook's tests run it under
# Lightning, Accelerate and Ray Train. numpy is held at the version above,
# which TensorFlow 2.15 needs; their newest dependencies would lift it to 2.x.
step "Lightning $LIGHTNING_VERSION, Accelerate $ACCELERATE_VERSION, Ray Train $RAY_VERSION"
if have lightning==$LIGHTNING_VERSION accelerate==$ACCELERATE_VERSION ray==$RAY_VERSION pyarrow==$PYARROW_VERSION numpy==$NUMPY_VERSION; then
  echo "already installed"
else
  pip_install "lightning==$LIGHTNING_VERSION" "accelerate==$ACCELERATE_VERSION" "ray[train]==$RAY_VERSION" \
    "pyarrow==$PYARROW_VERSION" "numpy==$NUMPY_VERSION" \
    || fail "pip could not install lightning/accelerate/ray[train]; is PyPI reachable?"
fi

step "mpi4py $MPI4PY_VERSION built against the system Open MPI (a few minutes the first time)"
if have mpi4py==$MPI4PY_VERSION && "$PY" -c "import mpi4py.MPI" 2>/dev/null; then
  echo "already installed"
else
  pip_install --no-binary mpi4py "mpi4py==$MPI4PY_VERSION" \
    || fail "mpi4py did not build: is libopenmpi-dev installed (mpicc on PATH)?"
fi

HOROVOD_WANTS="PyTorch TensorFlow MPI Gloo"
horovod_env=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1
             HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1)
pip_cache=()
if [ "$GPU" = 1 ]; then
  HOROVOD_WANTS="$HOROVOD_WANTS NCCL"
  # NCCL: HOROVOD_NCCL_HOME when given, else the one torch's CUDA wheels
  # bring (the nvidia-nccl pip package), whose library has only its versioned
  # name: CMake looks for libnccl.so, so a link to it goes into the venv.
  if [ -z "${HOROVOD_NCCL_HOME:-}" ]; then
    NCCL_PIP=$("$PY" -c "import nvidia.nccl as n; print(list(n.__path__)[0])" 2>/dev/null) \
      || fail "GPU mode: no NCCL found; install it (NVIDIA's libnccl-dev) and set HOROVOD_NCCL_HOME"
    mkdir -p "$VENV/nccl/lib"
    ln -sfn "$NCCL_PIP/include" "$VENV/nccl/include"
    ln -sf "$(ls "$NCCL_PIP"/lib/libnccl.so.* | head -n1)" "$VENV/nccl/lib/libnccl.so"
    export HOROVOD_NCCL_HOME="$VENV/nccl"
  fi
  # The CUDA kernels' architectures (ScaleCom's and Horovod's): Ampere, Hopper.
  CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$(echo "${HOROVOD_SCALECOM_CUDA_ARCHS:-80;90}" | tr ';' ',')}
  horovod_env+=(HOROVOD_GPU=CUDA HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED
                HOROVOD_CUDA_HOME="$CUDA_HOME" HOROVOD_BUILD_CUDA_CC_LIST="$CC_LIST"
                HOROVOD_NCCL_INCLUDE="$HOROVOD_NCCL_HOME/include" HOROVOD_NCCL_LIB="$HOROVOD_NCCL_HOME/lib"
                LDFLAGS="${LDFLAGS:-} -Wl,-rpath,$(readlink -f "$HOROVOD_NCCL_HOME/lib/libnccl.so" | xargs dirname)")
  # pip's wheel cache would hand back a Horovod built without NCCL.
  pip_cache=(--no-cache-dir)
fi
step "Horovod $HOROVOD_VERSION with ${HOROVOD_WANTS// /, } (about 7 minutes the first time)"
horovod_ok() {
  local report
  report=$("$VENV/bin/horovodrun" --check-build 2>/dev/null) || return 1
  for want in $HOROVOD_WANTS; do grep -q "\[X\] $want" <<<"$report" || return 1; done
}
if have horovod==$HOROVOD_VERSION && horovod_ok; then
  echo "already installed with ${HOROVOD_WANTS// /, }"
else
  if [ "$GPU" = 1 ] && have horovod==$HOROVOD_VERSION; then
    "$PY" -m pip uninstall -y -q horovod       # a CPU build, to be replaced
  fi
  # Horovod's CMake asks for C++14; torch 2.13 needs C++17 (see cxx17-launcher.sh).
  # The pip wheel cache stays on (CPU mode) so that a rebuild on this machine takes seconds.
  env CMAKE_CXX_COMPILER_LAUNCHER="$ROOT/scripts/cxx17-launcher.sh" "${horovod_env[@]}" \
      MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip install --disable-pip-version-check --no-build-isolation "${pip_cache[@]}" \
      "horovod==$HOROVOD_VERSION" \
    || fail "Horovod did not build; the compiler output above names the cause. A stale cached wheel can be dropped with: $PY -m pip cache remove horovod"
  horovod_ok || fail "Horovod installed but 'horovodrun --check-build' lacks one of ${HOROVOD_WANTS// /, }; run: $PY -m pip cache remove horovod && $PY -m pip uninstall -y horovod, then this script again"
fi

step "horovod_scalecom and its C++ extensions"
# Built in place by setup.py (incremental: only what changed is recompiled),
# and put on the venv's path with a .pth file: an editable install without
# pip's second, full rebuild of every extension in a scratch folder.
# GPU mode: the CUDA kernels are required (a missing nvcc is an error, not a skip).
[ "$GPU" = 1 ] && export HOROVOD_SCALECOM_CUDA=1
have pybind11==$PYBIND11_VERSION || pip_install "pybind11==$PYBIND11_VERSION" \
  || fail "pip could not install pybind11 (the ring's binding needs its headers); is PyPI reachable?"
"$PY" setup.py -q build_ext --inplace || fail "the C++ extensions did not compile; see the compiler output above"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$ROOT" > "$SITE/horovod_scalecom.pth"
(cd / && "$PY" -c "import horovod_scalecom.torch._ops, horovod_scalecom._ring") \
  || fail "horovod_scalecom does not import from the venv"

echo
echo "[setup] ready: $VENV"
echo "[setup] check it: $PY -m horovod_scalecom.check$([ "$GPU" = 1 ] && echo "; the GPU kernels: bash scripts/gpu_check.sh")"
