"""Who does what at step t: the cyclic leader (ScaleCom through Horovod's
allreduce) and the chunk owners (the ScaleCom ring)."""

from __future__ import annotations

import numpy as np

__all__ = ["leader", "chunk_bounds", "chunk_owner", "owned_chunk"]


def leader(step: int, offset: int, size: int) -> int:
    """Rank that selects the index set of a tensor at ``step``.

    ``offset`` is the tensor's registration index; it staggers the selection
    work across ranks (offset 0 for every tensor is the paper's schedule).
    """
    return (step + offset) % size


def chunk_bounds(numel: int, size: int) -> np.ndarray:
    """Start offsets of the ``size`` contiguous chunks, plus ``numel`` at the end.

    Same split as ``numpy.array_split``: the first ``numel % size`` chunks hold
    one element more.
    """
    base, extra = divmod(numel, size)
    sizes = np.full(size, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def chunk_owner(chunk: int, step: int, size: int) -> int:
    """Rank that selects the indices of ``chunk`` at ``step`` (the ring)."""
    return (chunk + step) % size


def owned_chunk(rank: int, step: int, size: int) -> int:
    """The chunk that ``rank`` owns at ``step``: the inverse of chunk_owner."""
    return (rank - step) % size
