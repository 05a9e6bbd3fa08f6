"""Bytes each worker sends per step (the byte model of docs/algorithm.md).

float32 values and int32 indices, 4 bytes each; n workers; N elements in the
tensor; k selected elements.
"""

from __future__ import annotations

__all__ = ["dense_ring_allreduce", "horovod_path", "ring", "topk_allgather"]

VALUE_BYTES = 4
INDEX_BYTES = 4


def dense_ring_allreduce(numel: int, size: int) -> float:
    """Ring allreduce of N float32 values: reduce-scatter plus allgather."""
    return 2 * VALUE_BYTES * numel * (size - 1) / size


def horovod_path(k: int, size: int) -> float:
    """ScaleCom through Horovod's allreduce (and the DDP hook): the index share
    from the leader (~4k) plus a ring allreduce of k values."""
    if size == 1:
        return 0.0
    return INDEX_BYTES * k + dense_ring_allreduce(k, size)


def ring(k: int, size: int) -> float:
    """The ScaleCom ring: (index, value) pairs in the reduce-scatter, values in
    the allgather."""
    return (INDEX_BYTES + VALUE_BYTES) * k * (size - 1) / size + VALUE_BYTES * k * (size - 1) / size


def topk_allgather(k: int, size: int) -> float:
    """Every worker's own top-k (index, value) pairs to every other worker (GRACE/DGC)."""
    return (INDEX_BYTES + VALUE_BYTES) * k * (size - 1)
