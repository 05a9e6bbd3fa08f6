"""The defaults under the standard Horovod recipe, on real data under mpirun:
examples/pytorch_digits.py (lr 0.1 x hvd.size(), momentum 0.9, ScaleCom's
defaults) trains, and a run pushed to diverge is reported by the guard."""

import json
import os
import subprocess
import sys

import pytest

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.guard import KINDS
from mpi import ROOT, mpirun_command, requires

requires("horovod.torch")
pytest.importorskip("sklearn", reason="the digits ship with scikit-learn (scripts/setup.sh)")


def digits(n, tmp_path, *args, timeout=300):
    out = tmp_path / "run.json"
    cmd = mpirun_command(n) + [sys.executable, str(ROOT / "examples" / "pytorch_digits.py"),
                               "--json", str(out), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env, start_new_session=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout + proc.stderr


@pytest.mark.parametrize("n", [2, 3])
def test_standard_recipe_trains_with_the_defaults(n, tmp_path):
    run, output = digits(n, tmp_path, "--epochs", "4")
    assert run["ranks"] == n and run["lr"] == 0.1         # 0.1 x n in all: the recipe
    assert run["beta"] == ScaleComConfig().beta and run["dense"] is False
    assert run["final_acc"] > 0.9, output
    assert run["warnings"] == [] and run["divergence"]["events"] == 0, output


def test_a_diverging_run_is_reported_by_the_guard(tmp_path):
    # A learning rate far past the edge: the guard names a tensor and a step
    # while the run goes on, once per tensor, and stats() lists it.
    run, output = digits(2, tmp_path, "--epochs", "1", "--lr", "50")
    firsts = run["divergence"]["first"]
    assert firsts, output
    assert {e["kind"] for e in firsts} <= set(KINDS)
    assert len(run["warnings"]) == len(firsts)            # one warning per tensor
    assert all("on rank 0" in w and "at step" in w for w in run["warnings"])
