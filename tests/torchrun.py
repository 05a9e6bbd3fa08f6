"""Launching real torchrun jobs from pytest, bounded in time.

torchrun (``python -m torch.distributed.run``, the same entry point as the
``torchrun`` script) runs in a process group of its own that
``mpi.run_bounded`` kills at the deadline with every worker it started, so a
rank that dies or hangs fails the test instead of stalling CI. Workers write
``rank{r}.npz`` / ``rank{r}.err`` into the output folder as under mpirun
(``mpi.Job`` reads them back).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mpi import ROOT, WORKERS, Job, run_bounded

EXAMPLES = ROOT / "examples"


def run_torchrun(script: Path, outdir: Path, *args: str, nproc: int = 2,
                 torchrun_args: tuple[str, ...] = (), timeout: float = 120,
                 env: dict[str, str] | None = None) -> Job:
    """``torchrun --standalone --nproc-per-node nproc [torchrun_args] script
    args`` on this machine; raises if it outlives ``timeout``."""
    outdir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]),
                    OMP_NUM_THREADS="1")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(nproc), *torchrun_args, str(script), *args]
    code, output, killed = run_bounded(cmd, full_env, timeout)
    if killed:
        raise AssertionError(f"torchrun {script.name} {' '.join(args)} did not end within "
                             f"{timeout} s (killed with its workers):\n{output}")
    return Job(code, output, outdir, nproc)
