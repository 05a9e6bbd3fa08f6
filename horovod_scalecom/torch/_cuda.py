"""torch.ops.scalecom's three operations for CUDA tensors, on the CUDA kernels.

Same contract as the CPU ops (csrc/torch/ops.cc) except that the count of
refused non-finite updates comes back as a one-element int64 tensor on the
device: turning it into a Python int would wait for the GPU at every tensor.
Work is enqueued on the tensor's device's current stream, as torch's own ops
do, so it orders with the backward pass that produced the gradient and with
Horovod's reads of the values.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from horovod_scalecom.cuda import GRAD_TYPES, CudaKernels, load_kernels


class CudaOps:
    """select_topk / gather_update_ / scatter over one loaded build of the kernels."""

    def __init__(self, kernels: CudaKernels | None = None) -> None:
        self.kernels = kernels if kernels is not None else load_kernels()

    @contextlib.contextmanager
    def launch(self, tensor: torch.Tensor) -> Iterator[int]:
        """The current stream of the tensor's device, with that device made current:
        the kernels launch on the calling thread's current device, which must be
        the stream's."""
        with torch.cuda.device(tensor.device):
            yield torch.cuda.current_stream(tensor.device).cuda_stream

    @staticmethod
    def _check(memory: torch.Tensor, grad: torch.Tensor) -> int:
        if memory.dtype != torch.float32 or not memory.is_contiguous() or memory.dim() != 1:
            raise ValueError("scalecom: memory must be a contiguous 1-D float32 tensor")
        if grad.numel() != memory.numel():
            raise ValueError(f"scalecom: gradient has {grad.numel()} elements but its memory "
                             f"has {memory.numel()}")
        if grad.device != memory.device:
            raise ValueError(f"scalecom: gradient on {grad.device}, its memory on "
                             f"{memory.device}")
        name = str(grad.dtype).removeprefix("torch.")
        if name not in GRAD_TYPES:
            raise ValueError(f"scalecom: the CUDA kernels take float32, float16 or bfloat16 "
                             f"gradients, got {grad.dtype}")
        return GRAD_TYPES[name]

    def _workspace(self, nbytes: int, device: torch.device) -> torch.Tensor:
        # From torch's caching allocator: no cudaMalloc per call.
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)

    def select_topk(self, memory: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
        grad_type = self._check(memory, grad)
        grad = grad.reshape(-1).contiguous()
        numel = memory.numel()
        workspace = self._workspace(self.kernels.select_workspace_bytes(numel, k), memory.device)
        indices = torch.empty(k, dtype=torch.int32, device=memory.device)
        with self.launch(memory) as stream:
            self.kernels.select_topk(memory.data_ptr(), grad.data_ptr(), grad_type, numel, k,
                                     indices.data_ptr(), workspace.data_ptr(), workspace.numel(),
                                     stream)
        return indices

    def gather_update_(self, memory: torch.Tensor, grad: torch.Tensor, indices: torch.Tensor,
                       beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        grad_type = self._check(memory, grad)
        if (indices.dtype != torch.int32 or indices.dim() != 1 or not indices.is_contiguous()
                or indices.device != memory.device):
            raise ValueError(f"scalecom: indices must be a contiguous 1-D int32 tensor on "
                             f"{memory.device}")
        grad = grad.reshape(-1).contiguous()
        k = indices.numel()
        workspace = self._workspace(self.kernels.gather_update_workspace_bytes(k), memory.device)
        values = torch.empty(k, dtype=torch.float32, device=memory.device)
        nonfinite = torch.empty(1, dtype=torch.int64, device=memory.device)
        with self.launch(memory) as stream:
            self.kernels.gather_update(memory.data_ptr(), grad.data_ptr(), grad_type,
                                       memory.numel(), indices.data_ptr(), k, float(beta),
                                       values.data_ptr(), nonfinite.data_ptr(),
                                       workspace.data_ptr(), workspace.numel(), stream)
        return values, nonfinite

    def scatter(self, indices: torch.Tensor, values: torch.Tensor, numel: int) -> torch.Tensor:
        if indices.dtype != torch.int32 or not indices.is_contiguous():
            raise ValueError("scalecom: indices must be a contiguous int32 tensor")
        if values.dtype != torch.float32 or not values.is_contiguous():
            raise ValueError("scalecom: values must be a contiguous float32 tensor")
        if values.numel() != indices.numel() or values.device != indices.device:
            raise ValueError(f"scalecom: {values.numel()} values on {values.device} for "
                             f"{indices.numel()} indices on {indices.device}")
        out = torch.empty(numel, dtype=torch.float32, device=values.device)
        with self.launch(values) as stream:
            self.kernels.scatter(indices.data_ptr(), values.data_ptr(), indices.numel(), numel,
                                 out.data_ptr(), stream)
        return out
