"""The self-check's report: what is built and loads, then one 2-rank
exchange of each available kind against the NumPy reference. One line per
finding; each failure is followed by what to do. Exit status 0 when nothing
failed, 1 otherwise."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import horovod_scalecom
from horovod_scalecom.check import expected, launch, probe

REBUILD = ("rebuild the extensions against the installed frameworks: `bash scripts/setup.sh` "
           "in the source tree, or `pip install --no-build-isolation .` (README, Install)")
HANG = ("a rank waited for another that never came: see 'When a job hangs' in docs/usage.md; "
        "rerun with --verbose for the job's output")
BUG = ("rerun with --verbose and file a bug with the whole output of this check")


class Report:
    """Collects the lines and counts the failures."""

    def __init__(self, out: Callable[[str], Any] = print) -> None:
        self.out = out
        self.failures = 0

    def line(self, status: str, text: str, fix: str = "") -> None:
        self.out(f"  {status:<5} {text}")
        if status == "FAIL":
            self.failures += 1
            self.out(f"        what to do: {fix or BUG}")

    def section(self, title: str) -> None:
        self.out(f"\n{title}")


# The exchanges: name shown, the framework probe it needs, what it needs of it.
KINDS: dict[str, str] = {
    "torch": "PyTorch, ScaleCom through Horovod's allreduce",
    "tensorflow": "TensorFlow, ScaleCom through Horovod's allreduce",
    "ring": "PyTorch, the ScaleCom ring",
    "ddp": "PyTorch DDP communication hook on gloo",
}


def _flags(horovod: dict[str, Any]) -> str:
    built = [name.upper() if name != "gloo" else "Gloo"
             for name, on in horovod["flags"].items() if on]
    missing = [name.upper() for name, on in horovod["flags"].items() if not on]
    return f"built with {', '.join(built) or 'nothing'}; without {', '.join(missing) or '-'}"


def report_framework(report: Report, name: str, found: dict[str, Any]) -> dict[str, str]:
    """The framework's lines; returns why each of its exchanges cannot run
    (kind -> reason), for those that cannot."""
    label = {"torch": "PyTorch", "tensorflow": "TensorFlow"}[name]
    kinds = ["torch", "ring", "ddp"] if name == "torch" else ["tensorflow"]
    if found.get("missing"):
        report.line("skip", f"{label} is not installed: its frontend and exchanges are skipped")
        return {kind: f"{label} is not installed" for kind in kinds}
    if "error" in found:
        report.line("FAIL", f"{label}: {found['error']}",
                    f"check that `{sys.executable} -c 'import {name}'` works")
        return {kind: f"{label} does not load" for kind in kinds}
    cannot: dict[str, str] = {}
    loads = [(key, *found[key]) for key in ("frontend", "ops", "keras", "ddp") if key in found]
    broken = [f"{key}: {value}" for key, ok, value in loads if not ok]
    if broken:
        report.line("FAIL", f"{label} {found['version']}: " + "; ".join(broken), REBUILD)
        cannot.update({kind: f"the {label} frontend does not load" for kind in kinds})
    else:
        what = {"torch": "horovod_scalecom.torch, torch.ops.scalecom"
                         + (" (with CUDA kernels)" if found["ops"][1] else " (CPU only)")
                         + ", the DDP hook",
                "tensorflow": "horovod_scalecom.tensorflow, .keras, the TensorFlow ops"}[name]
        report.line("ok", f"{label} {found['version']}: {what} load")
    ok, horovod = found["horovod"]
    horovod_kinds = ["torch", "ring"] if name == "torch" else ["tensorflow"]
    if not ok:
        report.line("skip", f"Horovod for {label} does not load ({horovod}): ScaleCom through "
                    "Horovod is skipped; scripts/setup.sh builds Horovod for both frameworks")
        cannot.update({kind: f"Horovod for {label} is not there" for kind in horovod_kinds})
    else:
        report.line("info", f"Horovod {horovod['version']} for {label}: {_flags(horovod)}")
        if not horovod["flags"]["mpi"]:
            cannot.update({kind: "Horovod was built without MPI (the check runs mpirun)"
                           for kind in horovod_kinds})
    if name == "torch":
        if not found["gloo"]:
            cannot.setdefault("ddp", "this torch has no gloo backend")
        _report_ring(report, found, cannot)
    return cannot


def _report_ring(report: Report, found: dict[str, Any], cannot: dict[str, str]) -> None:
    ok, error = found["ring"]
    if ok:
        report.line("ok", "the ScaleCom ring (horovod_scalecom._ring) loads")
    elif importlib.util.find_spec("horovod_scalecom._ring") is None:
        report.line("skip", "the ScaleCom ring is not built (Open MPI's mpicxx was not found "
                    "when the package was built)")
        cannot.setdefault("ring", "the ring is not built")
    else:
        report.line("FAIL", f"the ScaleCom ring does not load: {error}", REBUILD)
        cannot.setdefault("ring", "the ring does not load")


def report_cuda(report: Report, gpus: int) -> None:
    state, detail = probe.cuda_kernels()
    if state == "built":
        report.line("ok", f"CUDA kernels: {detail} loads; GPUs visible: {gpus}")
    elif state == "broken":
        report.line("FAIL", f"CUDA kernels: {detail}", REBUILD)
    elif gpus:
        report.line("FAIL", f"CUDA kernels are not built ({detail} is missing) but {gpus} GPU(s) "
                    "are visible: ScaleCom refuses GPU gradients",
                    "put nvcc on PATH and run `HOROVOD_SCALECOM_CUDA=1 bash scripts/setup.sh` "
                    "(or SCALECOM_GPU=1 for the whole GPU setup)")
    else:
        report.line("info", "CUDA kernels are not built (no nvcc or no CUDA build of torch or "
                    "TensorFlow when the package was built): CPU tensors only")


def report_mpi(report: Report) -> Optional[str]:
    """MPI's line; returns why mpirun jobs cannot run, or None."""
    found = probe.mpi()
    if not found["mpirun"]:
        report.line("skip", "mpirun is not on PATH: the Horovod exchanges are skipped "
                    "(Debian: apt-get install openmpi-bin libopenmpi-dev)")
        return "mpirun is not on PATH"
    mpi4py = f"; mpi4py {found['mpi4py']}" if found["mpi4py"] else ""
    report.line("info", f"MPI: {found['mpirun_version']} ({found['mpirun']}){mpi4py}")
    return None


def _cause(output: str) -> str:
    """The line of a failed job's output most likely to name the cause: the
    last error message, else the last line that is not a rule."""
    lines = [line.strip() for line in output.splitlines() if line.strip(" =-")]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1]


def run_exchange(kind: str, timeout: float) -> tuple[str, str, str, str]:
    """(status, text, what to do, the job's output) of one 2-rank exchange."""
    with tempfile.TemporaryDirectory(prefix="scalecom-check-") as tmp:
        outdir = Path(tmp)
        worker = ["-m", "horovod_scalecom.check.exchange", kind, tmp]
        if kind == "ddp":       # torchrun starts the interpreter itself
            cmd = launch.torchrun_command(expected.RANKS) + worker
        else:
            runner = launch.mpirun_command(expected.RANKS)
            assert runner is not None, "mpirun vanished since it was found"
            cmd = runner + [sys.executable] + worker
        job = launch.run_job(cmd, outdir, timeout)
        errors = {r: (outdir / f"rank{r}.err").read_text() for r in range(expected.RANKS)
                  if (outdir / f"rank{r}.err").exists()}
        if job.timed_out:
            return "FAIL", f"did not end within {timeout:.0f} s (killed)", HANG, job.output
        if errors:
            rank, error = sorted(errors.items())[0]
            fix = (REBUILD if error.startswith("ImportError")
                   else HANG if "waited" in error else BUG)
            return "FAIL", f"rank {rank} raised {error.splitlines()[0]}", fix, job.output
        paths = [outdir / f"rank{r}.npz" for r in range(expected.RANKS)]
        if job.returncode != 0 or not all(p.exists() for p in paths):
            return ("FAIL", f"the job ended with exit status {job.returncode}: "
                    f"{_cause(job.output)}", BUG, job.output)
        got = {}
        for rank, path in enumerate(paths):
            with np.load(path) as data:
                got[rank] = dict(data)
    want = expected.ring() if kind == "ring" else expected.horovod_path()
    problems = expected.compare(got, want)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return ("FAIL", f"differs from the NumPy reference: {problems[0]}{more}",
                f"{REBUILD}, then run the check again; if it still differs, {BUG}", job.output)
    return "ok", (f"{expected.STEPS} steps, {len(expected.SHAPES)} tensors on "
                  f"{expected.RANKS} ranks: equal to the reference"), "", job.output


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m horovod_scalecom.check",
        description="What horovod_scalecom was built with, and a 2-rank exchange of each "
                    "available kind against the NumPy reference.")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"exchanges to run, comma-separated (default: {','.join(KINDS)}; "
                             "'none' for the build report only)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds each exchange may take before it counts as a hang")
    parser.add_argument("--verbose", action="store_true",
                        help="print each failed exchange's whole output")
    args = parser.parse_args(argv)
    kinds = [] if args.kinds == "none" else args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    start = time.monotonic()
    report = Report()
    report.out(f"horovod_scalecom {horovod_scalecom.__version__} "
               f"({Path(horovod_scalecom.__file__).parent}), Python {platform.python_version()}")

    report.section("Built and loads")
    cannot: dict[str, str] = {}
    gpus = 0
    for name in ("torch", "tensorflow"):
        found = probe.framework(name)
        cannot.update(report_framework(report, name, found))
        gpus = max(gpus, int(found.get("gpus") or 0))
    report_cuda(report, gpus)
    no_mpi = report_mpi(report)
    if no_mpi:
        for kind in ("torch", "tensorflow", "ring"):
            cannot.setdefault(kind, no_mpi)

    report.section(f"Exchanges on {expected.RANKS} ranks against the NumPy reference")
    for kind in kinds:
        if kind in cannot:
            report.line("skip", f"{KINDS[kind]}: {cannot[kind]}")
            continue
        began = time.monotonic()
        status, text, fix, output = run_exchange(kind, args.timeout)
        report.line(status, f"{KINDS[kind]}: {text} ({time.monotonic() - began:.1f} s)", fix)
        if status == "FAIL" and args.verbose:
            report.out(output)

    verdict = "all checks passed" if not report.failures else f"{report.failures} failed"
    report.out(f"\n{verdict} ({time.monotonic() - start:.0f} s)")
    return 1 if report.failures else 0
