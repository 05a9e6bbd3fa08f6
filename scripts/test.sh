#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k reference`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
echo
echo "[test] pytest"
# --durations: CI prints where its time goes (keep the suite well under 45 minutes).
exec "$ROOT/.venv/bin/python" -m pytest -ra --durations=20 "$@" tests
