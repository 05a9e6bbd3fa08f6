"""The CUDA kernels for the GPU tests and the timing script: built from the
working tree with nvcc (once per content of csrc/cuda and archs), reached
through the package's own torch binding, horovod_scalecom.torch._cuda."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from horovod_scalecom.cuda import CudaKernels
from horovod_scalecom.cuda_build import ARCHS, HEADERS, SOURCES, nvcc_command


def build(cache: Path, archs=ARCHS) -> Path:
    """The shared library for these sources and archs, built once per content."""
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES + HEADERS)
                            + ",".join(archs).encode()).hexdigest()[:16]
    lib = cache / f"libscalecom_cuda_{digest}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(nvcc_command(lib, archs), check=True, timeout=600)
    return lib


def library(cache: Path) -> CudaKernels:
    """A fresh build of the kernels, loaded (built once per content and archs)."""
    return CudaKernels(build(cache))


def cuda_ops(cache: Path):
    """CudaOps (select_topk / gather_update_ / scatter on CUDA tensors) over a fresh build."""
    from horovod_scalecom.torch._cuda import CudaOps
    return CudaOps(library(cache))
