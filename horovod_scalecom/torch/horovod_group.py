"""The ranks a ScaleComState agrees with, through Horovod: a process set."""

from __future__ import annotations

import os
from typing import Any

import torch
import horovod.torch as hvd

from horovod_scalecom.horovod_call import describe_process_set, unheld_error
from horovod_scalecom.torch.horovod_waits import wait


class HorovodGroup:
    """A Horovod process set as ScaleComState's ``group``."""

    def __init__(self, process_set: Any = None) -> None:
        self.process_set = hvd.global_process_set if process_set is None else process_set
        if not isinstance(self.process_set, hvd.ProcessSet):
            raise TypeError("process_set must be a horovod.torch.ProcessSet (from "
                            f"hvd.add_process_set) or None, got {type(process_set).__name__}")
        # Under Horovod Elastic the world changes; horovod_scalecom.torch.elastic's
        # TorchState tells ScaleCom when (world_changed) and must hold it.
        self.elastic = os.environ.get("HOROVOD_ELASTIC") == "1"
        self.held = False

    def rank(self) -> int:
        return self.process_set.rank()

    def size(self) -> int:
        return self.process_set.size()

    def describe(self) -> str:
        return describe_process_set(self.process_set)

    def before_exchange(self) -> None:
        if self.elastic and not self.held:
            # TorchState's sync (world_changed) runs first thing in hvd.elastic.run.
            raise unheld_error("horovod_scalecom.torch.elastic.TorchState")

    def allgather_row(self, row: torch.Tensor, what: str, timeout: float) -> torch.Tensor:
        """Every rank's float64 row, in rank order; raises after ``timeout``."""
        return wait(hvd.allgather_async(row.reshape(1, -1), name="scalecom.config",
                                        process_set=self.process_set), what, timeout)

    def broadcast_steps(self, steps: dict[str, int]) -> dict[str, int]:
        """Rank 0's step counters (Elastic: the world changed)."""
        if self.process_set.process_set_id != 0:
            raise ValueError("ScaleCom under Horovod Elastic runs over every rank; "
                             "process sets are not supported there")
        self.held = True
        return hvd.broadcast_object(steps, root_rank=0, name="scalecom.elastic.steps")
