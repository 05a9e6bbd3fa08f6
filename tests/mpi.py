"""Launching real multi-rank jobs from pytest: mpirun with a hard time limit.

A worker writes ``rank{r}.npz`` (its results) or ``rank{r}.err`` (the
exception it raised) into ``outdir``; the test reads them back. The whole job
runs in its own process group and is killed at the deadline, so a rank that
dies or hangs fails the test instead of stalling CI.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from horovod_scalecom.check import launch

ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers"


def requires(module: str) -> None:
    """Skip unless ``module`` is installed, without importing it: the test
    process must never load horovod.torch and horovod.tensorflow together."""
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        pytest.skip(f"{module} is not installed", allow_module_level=True)


def mpirun_command(n: int) -> list[str]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun is not on PATH: run scripts/setup.sh (it installs Open MPI)")
    cmd = [mpirun, "-np", str(n), "--oversubscribe", "--bind-to", "none",
           "--mca", "btl", "self,tcp", "--mca", "pml", "ob1"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


@dataclass
class Job:
    returncode: int
    output: str
    outdir: Path
    n: int

    def result(self, rank: int) -> dict[str, np.ndarray]:
        path = self.outdir / f"rank{rank}.npz"
        if not path.exists():
            raise AssertionError(f"rank {rank} wrote no result; job output:\n{self.output}")
        with np.load(path) as data:
            return dict(data)

    def error(self, rank: int) -> str | None:
        path = self.outdir / f"rank{rank}.err"
        return path.read_text() if path.exists() else None

    def check_ok(self) -> "Job":
        assert self.returncode == 0, f"job failed ({self.returncode}):\n{self.output}"
        return self

    def assert_ranks_equal(self, prefix: str = "") -> None:
        """Every rank's arrays (those whose key starts with prefix) equal rank 0's, bitwise."""
        first = self.result(0)
        for rank in range(1, self.n):
            other = self.result(rank)
            for key in first:
                if key.startswith(prefix):
                    np.testing.assert_array_equal(other[key], first[key],
                                                  err_msg=f"{key} on rank {rank}")

    def assert_same_as(self, other: "Job") -> None:
        """Rank by rank, the same arrays as another job, bitwise."""
        for rank in range(self.n):
            mine, theirs = self.result(rank), other.result(rank)
            for key in mine:
                np.testing.assert_array_equal(mine[key], theirs[key],
                                              err_msg=f"{key} on rank {rank}")

    def assert_error_on_every_rank(self, message: str) -> None:
        assert self.returncode != 0, f"the job succeeded:\n{self.output}"
        for rank in range(self.n):
            err = self.error(rank)
            assert err is not None, f"rank {rank} reported no error:\n{self.output}"
            assert message in err, err


def gloo_command(n: int) -> list[str]:
    """horovodrun with Horovod's Gloo controller on this machine (no MPI)."""
    horovodrun = Path(sys.executable).with_name("horovodrun")
    if not horovodrun.exists():
        pytest.fail(f"{horovodrun} not found: run scripts/setup.sh (it installs Horovod)")
    return [str(horovodrun), "--gloo", "-np", str(n), "-H", f"localhost:{n}"]


def run_mpi(n: int, worker: str, outdir: Path, *args: str, timeout: float = 180,
            env: dict[str, str] | None = None, gloo: bool = False) -> Job:
    """Run tests/workers/<worker> on n ranks (mpirun, or horovodrun --gloo);
    raises if it outlives ``timeout``."""
    outdir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKERS)]),
        "OMP_NUM_THREADS": "1",
        "HOROVOD_STALL_CHECK_TIME_SECONDS": "20",
        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "60",
    })
    full_env.update(env or {})
    launcher = gloo_command(n) if gloo else mpirun_command(n)
    cmd = launcher + [sys.executable, str(WORKERS / worker), str(outdir), *args]
    returncode, output, timed_out = run_bounded(cmd, full_env, timeout)
    if timed_out:
        raise AssertionError(f"{cmd[0]} -np {n} {worker} did not end within {timeout} s "
                             f"(killed):\n{output}")
    return Job(returncode, output, outdir, n)


def run_bounded(cmd: list[str], env: dict[str, str],
                timeout: float) -> tuple[int, str, bool]:
    """(return code, output, whether it was killed): ``cmd`` in a process
    group of its own, ended at the deadline with everything it started
    (horovod_scalecom.check's bounded run, with 15 s between SIGTERM and
    SIGKILL)."""
    return launch.run_bounded(cmd, env, ROOT, timeout, grace=15.0)
