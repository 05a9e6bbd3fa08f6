"""Starting the self-check's 2-rank jobs: mpirun for the Horovod kinds,
torchrun for the DDP hook, each bounded in time."""

from __future__ import annotations

import os
import shutil
import site
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class JobResult:
    returncode: int
    output: str
    timed_out: bool


def mpirun_command(ranks: int) -> Optional[list[str]]:
    """mpirun for ``ranks`` processes on this machine, or None without one.
    Open MPI needs to be told that root may run it, that more ranks than
    cores are fine and that they must not be pinned to one core each; TCP
    over loopback keeps the check clear of the shared-memory transport,
    which some containers forbid (the check tests ScaleCom, not the
    machine's fastest transport). Other MPIs take plain ``-np``."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return None
    try:
        version = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    cmd = [mpirun, "-np", str(ranks)]
    if "Open MPI" in version:
        cmd += ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,tcp"]
        if os.geteuid() == 0:
            cmd.insert(1, "--allow-run-as-root")
    return cmd


def torchrun_command(ranks: int) -> list[str]:
    """torchrun on this machine (its rendezvous picks a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(ranks)]


def _pythonpath() -> str:
    """PYTHONPATH for the workers: they must import the horovod_scalecom this
    check runs from, also a source tree that is not installed (a site
    directory is left out: ahead of the standard library it could shadow it)."""
    root = str(Path(__file__).resolve().parents[2])
    sites = site.getsitepackages() + [site.getusersitepackages()]
    installed = {str(Path(p).resolve()) for p in sites}
    parts = [] if root in installed else [root]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def run_job(cmd: list[str], cwd: Path, timeout: float) -> JobResult:
    """``cmd`` in a process group of its own, ended with everything it
    started at the deadline: a hung exchange fails the check, it does not
    hang it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONUNBUFFERED="1", PYTHONPATH=_pythonpath())
    return JobResult(*run_bounded(cmd, env, cwd, timeout, grace=10.0))


def run_bounded(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float,
                grace: float) -> tuple[int, str, bool]:
    """(return code, output, whether it was killed): ``cmd`` in a process
    group of its own, ended at the deadline with everything it started.
    SIGTERM first (horovodrun ends the workers it started in sessions of
    their own only when asked to), SIGKILL after ``grace`` seconds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        return proc.returncode, output, True
