"""The CUDA kernels for the GPU tests and the timing script: torch.ops.scalecom
as the package built them (its CUDA kernels, through torch's dispatch), and,
for the ring's functions, a build of csrc/cuda from the working tree (once per
content and archs) loaded through horovod_scalecom.cuda."""

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


def torch_ops():
    """torch.ops.scalecom, which must have its CUDA kernels (setup.py built
    where torch has CUDA and nvcc is on PATH)."""
    from horovod_scalecom.torch._ops import CUDA_KERNELS, ops
    if not CUDA_KERNELS:
        raise RuntimeError("horovod_scalecom._torch_ops has no CUDA kernels: build the package "
                           "where torch has CUDA and nvcc is on PATH (python setup.py "
                           "build_ext --inplace)")
    return ops
