#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then trains a small model on 2 ranks
# with Horovod + ScaleCom (examples/pytorch_synthetic.py) and prints accuracy
# and the bytes saved. Extra arguments go to the example, e.g. --ratio 0.0025.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-run-as-root)
echo
echo "[demo] mpirun -np 2 examples/pytorch_synthetic.py $*"
OMP_NUM_THREADS=1 exec mpirun "${extra[@]}" -np 2 --bind-to none \
  "$ROOT/.venv/bin/python" examples/pytorch_synthetic.py "$@"
