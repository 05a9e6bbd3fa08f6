"""The library of CUDA kernels, ``horovod_scalecom/libscalecom_cuda.so``
(csrc/cuda, C ABI in csrc/cuda/scalecom_cuda.h), for the one caller that is
no framework op: the ring engine, which takes the kernels' addresses by name.

The frameworks reach the same kernels through their own dispatch: torch's
and TensorFlow's op libraries link the library and register GPU kernels
(csrc/torch/cuda_ops.cc, csrc/tensorflow/gpu_kernels.cc). setup.py builds it
with nvcc when the installed framework has CUDA; ``HOROVOD_SCALECOM_CUDA_LIB``
names another build for the ring.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

LIBRARY_NAME = "libscalecom_cuda.so"
LIBRARY_ENV = "HOROVOD_SCALECOM_CUDA_LIB"

# enum ScalecomGradType of scalecom_cuda.h
GRAD_TYPES = {"float32": 0, "float16": 1, "bfloat16": 2}

_p, _i64, _size, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_int
# The C ABI's functions by name (without the scalecom_cuda_ prefix):
# (restype, argtypes). Every build of the library checks this table against
# the prototypes of csrc/cuda/scalecom_cuda.h (cuda_build.check_signatures),
# so the two cannot drift; it stays here so that the package needs no header.
SIGNATURES = {
    "select_workspace_bytes": (_int, [_i64, _i64, ctypes.POINTER(_size)]),
    "select_topk": (_int, [_p, _p, _int, _i64, _i64, _p, _p, _size, _p]),
    "gather_update_workspace_bytes": (_int, [_i64, ctypes.POINTER(_size)]),
    "gather_update": (_int, [_p, _p, _int, _i64, _p, _i64, ctypes.c_float, _p, _p, _p, _size,
                             _p]),
    "scatter": (_int, [_p, _p, _i64, _i64, _p, _p]),
    "ring_select": (_int, [_p, _p, _int, _i64, _i64, _i64, _p, _p, _p, _size, _p]),
    "ring_accumulate": (_int, [_p, _p, _int, _i64, _i64, _p, _i64, _p, _p, _p]),
    "ring_divide": (_int, [_p, _i64, ctypes.c_float, _p, _p]),
    "copy_async": (_int, [_p, _p, _size, _p]),
    "synchronize": (_int, [_p]),
    "set_device": (_int, [_int]),
    "device_alloc": (_int, [ctypes.POINTER(_p), _size]),
    "device_free": (_int, [_p]),
    "host_alloc": (_int, [ctypes.POINTER(_p), _size]),
    "host_free": (_int, [_p]),
    "error_string": (ctypes.c_char_p, [_int]),
}


class CudaKernels:
    """One loaded build of the kernels."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            # RTLD_LOCAL: a build named by HOROVOD_SCALECOM_CUDA_LIB serves the
            # ring only; it must not stand in for the library the op libraries link.
            lib = ctypes.CDLL(str(self.path), mode=ctypes.RTLD_LOCAL)
            for name, (restype, argtypes) in SIGNATURES.items():
                fn = getattr(lib, f"scalecom_cuda_{name}")
                fn.restype, fn.argtypes = restype, argtypes
        except (OSError, AttributeError) as exc:
            raise ImportError(f"{self.path} is not a usable build of horovod_scalecom's CUDA "
                              f"kernels: {exc}. Rebuild with `bash scripts/setup.sh`.") from exc
        self._lib = lib

    def addresses(self) -> dict[str, int]:
        """Every function's address by name, without the ``scalecom_cuda_``
        prefix: the ring engine (use_device_kernels) takes the ones its
        table lists (csrc/ring/buffers.h), by name."""
        return {name: ctypes.cast(getattr(self._lib, f"scalecom_cuda_{name}"),
                                  ctypes.c_void_p).value
                for name in SIGNATURES}

    def error_string(self, code: int) -> str:
        return self._lib.scalecom_cuda_error_string(code).decode()


def library_path() -> Path:
    """Where the kernels are looked for: $HOROVOD_SCALECOM_CUDA_LIB, else the package."""
    override = os.environ.get(LIBRARY_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / LIBRARY_NAME


_loaded: dict[Path, CudaKernels] = {}
_lock = threading.Lock()


def load_kernels() -> CudaKernels:
    """The kernels, loaded once per process; ImportError that says how to build them."""
    path = library_path()
    with _lock:
        if path not in _loaded:
            if not path.exists():
                raise ImportError(
                    f"horovod_scalecom's CUDA kernels are not built ({path} does not exist). "
                    "setup.py builds them with nvcc when the installed torch or TensorFlow has "
                    "CUDA: install the CUDA toolkit (nvcc on PATH) and run `bash scripts/setup.sh` "
                    "again.")
            _loaded[path] = CudaKernels(path)
        return _loaded[path]
