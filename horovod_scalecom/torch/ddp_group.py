"""The ranks a ScaleComState agrees with, through torch.distributed: a
process group (for the DDP communication hook; no Horovod here)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


class DistGroup:
    """A torch.distributed process group as ScaleComState's ``group``.

    ScaleCom's own collectives run on two groups of its own over the same
    ranks, made here (a collective, on every rank of ``process_group``):

    * ``index_group`` carries the leaders' index broadcasts, issued from
      DDP's hook in bucket order;
    * ``value_group`` carries the allreduce of the k values, issued from the
      broadcasts' completion callbacks, chained in bucket order.

    Two groups, because collectives on one group must be issued in the same
    order on every rank: the callbacks run on communication threads, in the
    order the broadcasts complete, which differs between ranks; DDP's own
    collectives (the unused-parameter map, buffer broadcasts) keep the user's
    group to themselves. Every operation on them ends within ``timeout``.
    """

    def __init__(self, process_group: Any, timeout: float) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ScaleCom's DDP hook needs torch.distributed: call "
                               "torch.distributed.init_process_group() first")
        self.process_group = process_group if process_group is not None else dist.group.WORLD
        self.ranks = dist.get_process_group_ranks(self.process_group)
        self.backend = dist.get_backend(self.process_group)
        whole = len(self.ranks) == dist.get_world_size()
        try:
            made = [dist.new_group(self.ranks, timeout=timedelta(seconds=timeout),
                                   backend=self.backend, use_local_synchronization=not whole)
                    for _ in range(2)]
        except Exception as exc:   # the store's own timeout error names no cause
            raise RuntimeError(
                f"ScaleCom: rank {dist.get_rank()} waited up to {timeout:.0f} s for every rank "
                f"of {self.describe()} to build ScaleComHookState ({exc}). It is collective: "
                "build it on every rank, after DDP; a rank that raised or stopped never "
                "arrives.") from exc
        self.index_group, self.value_group = made
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if self.backend == "nccl" else torch.device("cpu"))

    def rank(self) -> int:
        return dist.get_rank(self.process_group)

    def size(self) -> int:
        return dist.get_world_size(self.process_group)

    def global_rank(self, group_rank: int) -> int:
        return self.ranks[group_rank]

    def describe(self) -> str:
        if len(self.ranks) == dist.get_world_size():
            return f"the {len(self.ranks)} ranks of the process group"
        return f"the process group of ranks {self.ranks}"

    def before_exchange(self) -> None:
        """Nothing to check: torchrun restarts the processes when the world changes."""

    def allgather_row(self, row: torch.Tensor, what: str, timeout: float) -> torch.Tensor:
        """Every rank's float64 row, in rank order; raises after ``timeout``."""
        row = row.reshape(-1).to(self.device)
        rows = [torch.empty_like(row) for _ in range(self.size())]
        work = dist.all_gather(rows, row, group=self.index_group, async_op=True)
        try:
            work.wait(timeout=timedelta(seconds=timeout))
        except RuntimeError as exc:
            raise RuntimeError(
                f"ScaleCom: rank {self.rank()} waited up to {timeout:.0f} s for {what}, "
                f"and it did not come ({exc}). Every rank must build the hook's state "
                "with the same arguments; one that raised or stopped never sends.") from exc
        return torch.stack(rows).cpu()

    def broadcast_steps(self, steps: dict[str, int]) -> dict[str, int]:
        """Rank 0's step counters."""
        box = [steps]
        dist.broadcast_object_list(box, src=self.ranks[0], group=self.index_group)
        return box[0]
