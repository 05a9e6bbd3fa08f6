"""Builds csrc/cuda into a shared library with nvcc and calls it through ctypes
on torch CUDA tensors: how the GPU tests and the timing script reach the
kernels until the torch/TensorFlow ops dispatch to them."""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ("80", "90")
GRAD_TYPES = {"float32": 0, "float16": 1, "bfloat16": 2}


def nvcc_command(output: Path, archs=ARCHS, shared: bool = True) -> list[str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH")
    cmd = [nvcc, "-std=c++17", "-O3", "--fmad=false", "-Xcompiler", "-fPIC",
           "-Werror", "all-warnings"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd + (["-shared"] if shared else ["-c"]) + [str(s) for s in SOURCES] + ["-o", str(output)]


def build(cache: Path, archs=ARCHS) -> Path:
    """The shared library for these sources and archs, built once per content."""
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES)
                            + (ROOT / "csrc/cuda/scalecom_cuda.h").read_bytes()
                            + ",".join(archs).encode()).hexdigest()[:16]
    lib = cache / f"libscalecom_cuda_{digest}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(nvcc_command(lib, archs), check=True, timeout=600)
    return lib


class Kernels:
    """The C ABI of csrc/cuda/scalecom_cuda.h over torch CUDA tensors."""

    def __init__(self, lib_path: Path) -> None:
        import torch
        self.torch = torch
        lib = ctypes.CDLL(str(lib_path))
        p, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_size_t)
        lib.scalecom_cuda_select_workspace_bytes.argtypes = [i64, i64, sz]
        lib.scalecom_cuda_select_topk.argtypes = [p, p, ctypes.c_int, i64, i64, p, p,
                                                  ctypes.c_size_t, p]
        lib.scalecom_cuda_gather_update_workspace_bytes.argtypes = [i64, sz]
        lib.scalecom_cuda_gather_update.argtypes = [p, p, ctypes.c_int, i64, p, i64,
                                                    ctypes.c_float, p, p, p, ctypes.c_size_t, p]
        lib.scalecom_cuda_scatter.argtypes = [p, p, i64, i64, p, p]
        lib.scalecom_cuda_error_string.restype = ctypes.c_char_p
        self.lib = lib

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what}: {self.lib.scalecom_cuda_error_string(code).decode()}")

    def _stream(self):
        return ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)

    def _workspace(self, fn, *args):
        size = ctypes.c_size_t()
        self._check(fn(*args, ctypes.byref(size)), fn.__name__)
        return self.torch.empty(max(size.value, 1), dtype=self.torch.uint8, device="cuda")

    def select_topk(self, memory, grad, k: int):
        torch = self.torch
        ws = self._workspace(self.lib.scalecom_cuda_select_workspace_bytes, memory.numel(), k)
        out = torch.empty(k, dtype=torch.int32, device="cuda")
        self._check(self.lib.scalecom_cuda_select_topk(
            memory.data_ptr(), grad.data_ptr(), GRAD_TYPES[str(grad.dtype).split(".")[1]],
            memory.numel(), k, out.data_ptr(), ws.data_ptr(), ws.numel(), self._stream()),
            "select_topk")
        return out

    def gather_update_(self, memory, grad, indices, beta: float):
        torch = self.torch
        k = indices.numel()
        ws = self._workspace(self.lib.scalecom_cuda_gather_update_workspace_bytes, k)
        values = torch.empty(k, dtype=torch.float32, device="cuda")
        count = torch.zeros(1, dtype=torch.int64, device="cuda")
        self._check(self.lib.scalecom_cuda_gather_update(
            memory.data_ptr(), grad.data_ptr(), GRAD_TYPES[str(grad.dtype).split(".")[1]],
            memory.numel(), indices.data_ptr(), k, beta, values.data_ptr(), count.data_ptr(),
            ws.data_ptr(), ws.numel(), self._stream()), "gather_update")
        return values, count

    def scatter(self, indices, values, numel: int):
        out = self.torch.empty(numel, dtype=self.torch.float32, device="cuda")
        self._check(self.lib.scalecom_cuda_scatter(indices.data_ptr(), values.data_ptr(),
                                                   indices.numel(), numel, out.data_ptr(),
                                                   self._stream()), "scatter")
        return out
