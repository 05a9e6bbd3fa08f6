"""How csrc/cuda is compiled into libscalecom_cuda.so: one nvcc command shared
by setup.py and the tests (stdlib only, so setup.py can load it by path)."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
HEADERS = sorted(p for pattern in ("*.h", "*.cuh") for p in (ROOT / "csrc" / "cuda").glob(pattern))
# Ampere and Hopper; HOROVOD_SCALECOM_CUDA_ARCHS (e.g. "80;90;100") overrides in setup.py.
ARCHS = ("80", "90")


def nvcc_command(output: Path, archs=ARCHS, shared: bool = True) -> list[str]:
    """--fmad=false: no contraction of m + beta * g into an FMA, so the
    kernels round as the CPU core and the NumPy reference do."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH")
    cmd = [nvcc, "-std=c++17", "-O3", "--fmad=false", "-Xcompiler", "-fPIC",
           "-Werror", "all-warnings"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd + (["-shared"] if shared else ["-c"]) + [str(s) for s in SOURCES] + ["-o", str(output)]


def up_to_date(output: Path) -> bool:
    return output.exists() and all(output.stat().st_mtime >= s.stat().st_mtime
                                   for s in SOURCES + HEADERS)
