"""The CUDA kernels of csrc/cuda through their C ABI (csrc/cuda/scalecom_cuda.h).

Framework-free: every call takes raw device addresses and a ``cudaStream_t``
as integers, so the torch frontend (and any other) reaches the same kernels
without a CUDA build of its own extension. The library,
``horovod_scalecom/libscalecom_cuda.so``, is built by setup.py with nvcc when
the installed framework has CUDA; ``HOROVOD_SCALECOM_CUDA_LIB`` names another
build.

Every function only enqueues work on the given stream; errors the kernels
meet while running surface at the stream's next synchronisation, as with any
CUDA library.
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

_p, _i64, _size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
_SIGNATURES = {
    "scalecom_cuda_select_workspace_bytes": [_i64, _i64, ctypes.POINTER(_size)],
    "scalecom_cuda_select_topk": [_p, _p, ctypes.c_int, _i64, _i64, _p, _p, _size, _p],
    "scalecom_cuda_gather_update_workspace_bytes": [_i64, ctypes.POINTER(_size)],
    "scalecom_cuda_gather_update": [_p, _p, ctypes.c_int, _i64, _p, _i64, ctypes.c_float, _p,
                                    _p, _p, _size, _p],
    "scalecom_cuda_scatter": [_p, _p, _i64, _i64, _p, _p],
    "scalecom_cuda_ring_select": [_p, _p, ctypes.c_int, _i64, _i64, _i64, _p, _p, _p, _size, _p],
    "scalecom_cuda_ring_accumulate": [_p, _p, ctypes.c_int, _i64, _i64, _p, _i64, _p, _p, _p],
    "scalecom_cuda_ring_divide": [_p, _i64, ctypes.c_float, _p, _p],
    "scalecom_cuda_copy_async": [_p, _p, _size, _p],
    "scalecom_cuda_synchronize": [_p],
    "scalecom_cuda_set_device": [ctypes.c_int],
    "scalecom_cuda_device_alloc": [ctypes.POINTER(_p), _size],
    "scalecom_cuda_device_free": [_p],
    "scalecom_cuda_host_alloc": [ctypes.POINTER(_p), _size],
    "scalecom_cuda_host_free": [_p],
}
class CudaKernels:
    """One loaded build of the kernels; methods mirror the C functions."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            # RTLD_GLOBAL: the TensorFlow op library finds the same symbols.
            lib = ctypes.CDLL(str(self.path), mode=ctypes.RTLD_GLOBAL)
            for name, argtypes in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = argtypes, ctypes.c_int
            lib.scalecom_cuda_error_string.argtypes = [ctypes.c_int]
            lib.scalecom_cuda_error_string.restype = ctypes.c_char_p
        except (OSError, AttributeError) as exc:
            raise ImportError(f"{self.path} is not a usable build of horovod_scalecom's CUDA "
                              f"kernels: {exc}. Rebuild with `bash scripts/setup.sh`.") from exc
        self._lib = lib

    def addresses(self) -> dict[str, int]:
        """Every function's address by name, without the ``scalecom_cuda_``
        prefix: the ring engine (use_device_kernels) takes the ones its
        table lists (csrc/ring/buffers.h), by name."""
        return {name.removeprefix("scalecom_cuda_"):
                ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value
                for name in (*_SIGNATURES, "scalecom_cuda_error_string")}

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"scalecom CUDA {what}: "
                               f"{self._lib.scalecom_cuda_error_string(code).decode()} "
                               f"(error {code})")

    def select_workspace_bytes(self, numel: int, k: int) -> int:
        size = _size()
        self._check(self._lib.scalecom_cuda_select_workspace_bytes(numel, k, ctypes.byref(size)),
                    f"select_workspace_bytes(numel={numel}, k={k})")
        return size.value

    def gather_update_workspace_bytes(self, k: int) -> int:
        size = _size()
        self._check(self._lib.scalecom_cuda_gather_update_workspace_bytes(k, ctypes.byref(size)),
                    f"gather_update_workspace_bytes(k={k})")
        return size.value

    def select_topk(self, memory: int, grad: int, grad_type: int, numel: int, k: int,
                    indices: int, workspace: int, workspace_bytes: int, stream: int) -> None:
        self._check(self._lib.scalecom_cuda_select_topk(
            memory, grad, grad_type, numel, k, indices, workspace, workspace_bytes, stream),
            f"select_topk(numel={numel}, k={k})")

    def gather_update(self, memory: int, grad: int, grad_type: int, numel: int, indices: int,
                      k: int, beta: float, values: int, nonfinite: int, workspace: int,
                      workspace_bytes: int, stream: int) -> None:
        self._check(self._lib.scalecom_cuda_gather_update(
            memory, grad, grad_type, numel, indices, k, beta, values, nonfinite, workspace,
            workspace_bytes, stream), f"gather_update(numel={numel}, k={k})")

    def scatter(self, indices: int, values: int, k: int, numel: int, out: int,
                stream: int) -> None:
        self._check(self._lib.scalecom_cuda_scatter(indices, values, k, numel, out, stream),
                    f"scatter(numel={numel}, k={k})")


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
