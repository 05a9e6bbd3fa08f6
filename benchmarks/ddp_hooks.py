"""The DDP communication hooks the exchange benchmark times, over one gloo group.

* DDP dense: DDP's own allreduce, no hook: what a DDP user runs today.
* DDP fp16: torch's fp16_compress_hook, half the bytes: the first compression
  a DDP user would try. (torch's bf16_compress_hook sends the same bytes but
  refuses gloo: it needs NCCL or XCCL.)
* PowerSGD: torch's powerSGD_hook (Vogels et al.), rank 4, in one bucket.
* ScaleCom: horovod_scalecom.torch.ddp's hook, in DDP's own buckets (25 MB,
  the first 1 MB), so that the exchange of early buckets overlaps backward.

Both with gradient_as_bucket_view=True: the gradients live in DDP's buckets,
and no step copies 100 MB into them and back.

Each takes the same list of gradients as the benchmark's other methods
(benchmarks.baselines.Params: backward hands DDP exactly those) and reports
the bytes each rank sends by the byte model of docs/algorithm.md (ring collectives).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from horovod_scalecom import bytes_model

from benchmarks.baselines import Params


def init_gloo(rank: int, size: int, master: str) -> None:
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank,
                                world_size=size)


class TorchDDP:
    """torch DDP over gloo with its default allreduce (``hook=None``) or
    torch's fp16 compression hook (``hook="fp16"``), in DDP's own buckets;
    ``step(grads)`` runs one backward."""

    def __init__(self, shapes, rank: int, size: int, master: str,
                 hook: str | None = None) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        if hook not in (None, "fp16"):
            raise ValueError(f"unknown torch DDP hook {hook!r}: None or 'fp16'")
        init_gloo(rank, size, master)
        self.shapes, self.hook = shapes, hook
        self.module = Params(shapes)
        self.ddp = DistributedDataParallel(self.module, gradient_as_bucket_view=True)
        if hook == "fp16":
            self.ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)

    def step(self, grads: list[torch.Tensor]) -> None:
        self.ddp(grads).backward()
        self.module.zero_grad()

    def bytes_per_rank(self, size: int) -> float:
        """Every gradient by ring allreduce, in 2-byte values with fp16."""
        dense = sum(bytes_model.dense_ring_allreduce(int(np.prod(s)), size)
                    for s in self.shapes)
        return dense / 2 if self.hook == "fp16" else dense


class PowerSGD:
    """torch DDP + powerSGD_hook over gloo; ``step(grads)`` runs one backward."""

    def __init__(self, shapes, rank: int, size: int, master: str, matrix_rank: int = 4,
                 warmup: int = 2, bucket_view: bool = True) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        init_gloo(rank, size, master)
        self.shapes = shapes
        self.module = Params(shapes)
        # One bucket: with several, the hook's chained P and Q allreduces of
        # different buckets were issued in a different order on different ranks
        # and gloo failed with "Received data size doesn't match expected size".
        self.ddp = DistributedDataParallel(self.module, bucket_cap_mb=4096,
                                           gradient_as_bucket_view=bucket_view)
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


class ScaleComHook:
    """torch DDP + ScaleCom's hook over gloo; ``step(grads)`` runs one backward."""

    def __init__(self, shapes, rank: int, size: int, master: str, ratio: float) -> None:
        from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

        init_gloo(rank, size, master)
        self.module = Params(shapes)
        self.ddp = DistributedDataParallel(self.module, gradient_as_bucket_view=True)
        self.state = ScaleComHookState(self.ddp, ratio=ratio, beta=0.1)
        self.ddp.register_comm_hook(self.state, scalecom_hook)

    def step(self, grads: list[torch.Tensor]) -> None:
        self.ddp(grads).backward()
        self.module.zero_grad()

    def breakdown(self) -> dict[str, float]:
        """Seconds of the last step: selection, memory update and scatter."""
        stats = self.state.stats()
        return {k: stats[k] for k in ("clip_s", "select_s", "update_s", "decompress_s")}

    def bytes_per_rank(self) -> float:
        return float(self.state.stats()["bytes_sent"])
