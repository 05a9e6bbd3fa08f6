#!/usr/bin/env bash
# One idempotent setup for horovod-scalecom on a Debian machine:
#   Open MPI (Debian) -> .venv -> torch, TensorFlow, mpi4py, pytest -> Horovod
#   (built for PyTorch, TensorFlow, MPI, Gloo) -> this package and its C++ op.
# Each step is skipped when its result is already there, so a second run on a
# ready machine takes seconds. On failure it names the step and what to try.
set -euo pipefail
export TF_CPP_MIN_LOG_LEVEL=3  # TensorFlow start-up chatter, not our business
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

TORCH_VERSION=2.13.0
TF_VERSION=2.15.1
NUMPY_VERSION=1.26.4
SKLEARN_VERSION=1.9.1
MNIST1D_VERSION=0.0.2.post1
MPI4PY_VERSION=4.1.2
HOROVOD_VERSION=0.28.1

step() { CURRENT_STEP="$1"; printf '\n[setup] %s\n' "$1"; }
fail() {
  printf '\n[setup] FAILED at step: %s\n[setup] %s\n' "$CURRENT_STEP" "$1" >&2
  exit 1
}
trap 'fail "see the output above; fix the cause and run scripts/setup.sh again (finished steps are skipped)."' ERR

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "Open MPI from Debian (libopenmpi-dev, openmpi-bin)"
if dpkg -s libopenmpi-dev openmpi-bin >/dev/null 2>&1 && command -v mpirun >/dev/null; then
  echo "already installed: $(mpirun --version | head -n1)"
else
  as_root apt-get update -q || fail "apt-get update failed: check the network to the Debian mirror"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q libopenmpi-dev openmpi-bin \
    || fail "apt-get install libopenmpi-dev openmpi-bin failed"
fi

step "virtual environment in $VENV"
[ -x "$PY" ] || python3 -m venv "$VENV" || fail "python3 -m venv failed: install python3-venv"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
have() { "$PY" - "$@" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    assert version(name) == want, spec
PYEOF
}

step "torch $TORCH_VERSION (CPU), TensorFlow $TF_VERSION, numpy $NUMPY_VERSION, pytest"
if have torch==$TORCH_VERSION tensorflow==$TF_VERSION numpy==$NUMPY_VERSION; then
  echo "already installed"
else
  pip_install --upgrade pip setuptools wheel
  pip_install "torch==$TORCH_VERSION" "tensorflow==$TF_VERSION" "numpy==$NUMPY_VERSION" \
    || fail "pip could not install torch/tensorflow; is PyPI reachable?"
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

step "mpi4py $MPI4PY_VERSION built against the system Open MPI (a few minutes the first time)"
if have mpi4py==$MPI4PY_VERSION && "$PY" -c "import mpi4py.MPI" 2>/dev/null; then
  echo "already installed"
else
  pip_install --no-binary mpi4py "mpi4py==$MPI4PY_VERSION" \
    || fail "mpi4py did not build: is libopenmpi-dev installed (mpicc on PATH)?"
fi

step "Horovod $HOROVOD_VERSION with PyTorch, TensorFlow, MPI and Gloo (about 7 minutes the first time)"
horovod_ok() {
  "$VENV/bin/horovodrun" --check-build 2>/dev/null | awk '
    /\[X\] PyTorch/ {t=1} /\[X\] TensorFlow/ {f=1} /\[X\] MPI/ {m=1} /\[X\] Gloo/ {g=1}
    END {exit !(t && f && m && g)}'
}
if have horovod==$HOROVOD_VERSION && horovod_ok; then
  echo "already installed with all four"
else
  # Horovod's CMake asks for C++14; torch 2.13 needs C++17 (see cxx17-launcher.sh).
  # The pip wheel cache stays on so that a rebuild on this machine takes seconds.
  CMAKE_CXX_COMPILER_LAUNCHER="$ROOT/scripts/cxx17-launcher.sh" \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip install --disable-pip-version-check --no-build-isolation \
      "horovod==$HOROVOD_VERSION" \
    || fail "Horovod did not build; the compiler output above names the cause. A stale cached wheel can be dropped with: $PY -m pip cache remove horovod"
  horovod_ok || fail "Horovod installed but 'horovodrun --check-build' lacks one of PyTorch/TensorFlow/MPI/Gloo; run: $PY -m pip cache remove horovod && $PY -m pip uninstall -y horovod, then this script again"
fi

step "horovod_scalecom and its C++ extensions"
# Built in place by setup.py (incremental: only what changed is recompiled),
# and put on the venv's path with a .pth file: an editable install without
# pip's second, full rebuild of every extension in a scratch folder.
"$PY" setup.py -q build_ext --inplace || fail "the C++ extensions did not compile; see the compiler output above"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$ROOT" > "$SITE/horovod_scalecom.pth"
(cd / && "$PY" -c "import horovod_scalecom.torch._ops, horovod_scalecom._ring") \
  || fail "horovod_scalecom does not import from the venv"

echo
echo "[setup] ready: $VENV"
