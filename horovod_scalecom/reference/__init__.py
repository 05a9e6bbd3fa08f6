"""NumPy oracle of ScaleCom: the specification every kernel and test is held to.

* :mod:`.core`: one worker's arithmetic (top-k with its tie rule, the fused
  gather and low-pass memory update, the dense output).
* :mod:`.horovod_path`: n workers in one process, CLT-k with a cyclic leader and an
  allreduce of the k values: ScaleCom through Horovod's allreduce (the
  drop-in Horovod compressor).
* :mod:`.ring_path`: n workers in one process, the ScaleCom ring: the compressed
  ring allreduce with chunk-wise cyclic owners.
* :mod:`.topk_allgather`: the baseline, local top-k + allgather + classic
  error feedback (GRACE / DGC), for the convergence study.

The simulators also count the bytes each worker sends, for large-n studies.
"""

from horovod_scalecom.reference.core import (
    accumulate,
    gather_and_update,
    scatter,
    topk_indices,
)
from horovod_scalecom.reference.horovod_path import HorovodPathSimulator
from horovod_scalecom.reference.ring_path import RingSimulator, ring_exchange
from horovod_scalecom.reference.topk_allgather import TopkAllgatherSimulator

__all__ = [
    "accumulate",
    "gather_and_update",
    "scatter",
    "topk_indices",
    "HorovodPathSimulator",
    "RingSimulator",
    "ring_exchange",
    "TopkAllgatherSimulator",
]
