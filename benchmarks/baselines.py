"""A peer ScaleCom is timed against, written for the exchange benchmark:
TopkAllgather, local top-k with error feedback and an allgather of the
(index, value) pairs (the GRACE / DGC scheme), over Horovod. It takes the
same list of gradients as the other methods and reports the bytes each rank
sends by the byte model of docs/algorithm.md. PowerSGD, torch's own DDP hook, is in
benchmarks.ddp_hooks beside ScaleCom's hook.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from horovod_scalecom import bytes_model
from horovod_scalecom.config import num_selected


class TopkAllgather:
    """Every rank sends the top-k of its own memory-accumulated gradient to all.

    All tensors of a step are fused: one allgather of int32 flat indices and
    one of float32 values (Horovod would fuse the per-tensor ones anyway).
    Classic error feedback: the memory keeps p with the selected entries zeroed.
    """

    def __init__(self, shapes, ratio: float) -> None:
        self.numel = [int(np.prod(s)) for s in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.numel)])
        self.k = [num_selected(n, ratio) for n in self.numel]
        self.memory = [torch.zeros(n) for n in self.numel]
        self.compress_s = 0.0

    def exchange(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        import horovod.torch as hvd
        start = time.perf_counter()
        idx, vals = [], []
        for i, g in enumerate(grads):
            p = self.memory[i].add_(g.reshape(-1))      # the memory becomes p, in place
            top = torch.topk(p.abs(), self.k[i], sorted=False).indices
            vals.append(p[top])
            p[top] = 0.0
            idx.append((top + int(self.offsets[i])).to(torch.int32))
        idx, vals = torch.cat(idx), torch.cat(vals)
        self.compress_s = time.perf_counter() - start
        all_idx = hvd.allgather(idx, name="topk.idx")
        all_vals = hvd.allgather(vals, name="topk.vals")
        flat = torch.zeros(int(self.offsets[-1])).index_add_(0, all_idx.long(), all_vals)
        flat /= hvd.size()
        return [flat[self.offsets[i]:self.offsets[i + 1]].view_as(g) for i, g in enumerate(grads)]

    def bytes_per_rank(self, size: int) -> float:
        return float(sum(bytes_model.topk_allgather(k, size) for k in self.k))


class Params(torch.nn.Module):
    """Parameters of the given shapes; forward(grads) = sum(p * g), so backward
    produces exactly the chosen gradients (for DDP and for Horovod alike)."""

    def __init__(self, shapes) -> None:
        super().__init__()
        for i, shape in enumerate(shapes):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(shape)))

    def forward(self, grads):
        return sum((p * g).sum() for p, g in zip(self.parameters(), grads))
