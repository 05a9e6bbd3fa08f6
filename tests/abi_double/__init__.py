"""Builds host_abi.cc: the CUDA kernels' C ABI on host memory (see its header)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_host_double(directory: Path) -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ is not on PATH")
    lib = Path(directory) / "libscalecom_cuda_host_double.so"
    subprocess.run([gxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off",
                    str(ROOT / "csrc/core/scalecom.cc"), str(ROOT / "tests/abi_double/host_abi.cc"),
                    "-o", str(lib)], check=True, timeout=300)
    return lib
