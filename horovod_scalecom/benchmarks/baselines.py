"""The peers ScaleCom is timed against, written for the exchange benchmark.

* TopkAllgather: local top-k with error feedback and an allgather of the
  (index, value) pairs (the GRACE / DGC scheme), over Horovod.
* PowerSGD: torch's DDP communication hook (powerSGD_hook) over a gloo
  process group, the reference implementation of Vogels et al.

Both take the same list of gradients as the other methods and report the
bytes each rank sends by the byte model of DESIGN.md (ring collectives).
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


class PowerSGD:
    """torch DDP + powerSGD_hook over gloo; ``step(grads)`` runs one backward."""

    def __init__(self, shapes, rank: int, size: int, master: str, matrix_rank: int = 4,
                 warmup: int = 2) -> None:
        import torch.distributed as dist
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank,
                                    world_size=size)
        self.shapes = shapes
        self.module = Params(shapes)
        # One bucket: with several, the hook's chained P and Q allreduces of
        # different buckets were issued in a different order on different ranks
        # and gloo failed with "Received data size doesn't match expected size".
        self.ddp = DistributedDataParallel(self.module, bucket_cap_mb=4096)
        state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=matrix_rank,
                                   start_powerSGD_iter=warmup, min_compression_rate=2,
                                   use_error_feedback=True, warm_start=True)
        self.ddp.register_comm_hook(state, psgd.powerSGD_hook)
        self.matrix_rank = matrix_rank

    def step(self, grads: list[torch.Tensor]) -> None:
        self.ddp(grads).backward()
        self.module.zero_grad()

    def bytes_per_rank(self, size: int) -> float:
        """P and Q of each compressed matrix, the rest dense, all by ring allreduce."""
        total = 0.0
        r = self.matrix_rank
        for shape in self.shapes:
            numel = int(np.prod(shape))
            if len(shape) > 1:
                rows, cols = shape[0], numel // shape[0]
                compressed = (rows + cols) * r
                if 2 * compressed < numel:        # the hook's min_compression_rate=2
                    total += bytes_model.dense_ring_allreduce(compressed, size)
                    continue
            total += bytes_model.dense_ring_allreduce(numel, size)
        return total


class Params(torch.nn.Module):
    """Parameters of the given shapes; forward(grads) = sum(p * g), so backward
    produces exactly the chosen gradients (for DDP and for Horovod alike)."""

    def __init__(self, shapes) -> None:
        super().__init__()
        for i, shape in enumerate(shapes):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(shape)))

    def forward(self, grads):
        return sum((p * g).sum() for p, g in zip(self.parameters(), grads))
