"""n-worker simulator of the ScaleCom ring: the compressed ring allreduce.

Each tensor is cut into n contiguous chunks (``schedule.chunk_bounds``);
at step t chunk j is owned by rank (j + t) mod n.

Reduce-scatter, n - 1 hops: the owner o selects the top-k_j of |p_o| in its
chunk and sends (indices, p_o[indices]) to rank o + 1; every next rank adds
its own p at those indices and forwards. The sum of chunk j is complete at
rank o - 1 and is summed in ring order ((p_o + p_o+1) + p_o+2) + ... .
Allgather, n - 1 hops: values only, starting at rank o - 1.
Every rank has seen every index set, so each updates its memory with the
low-pass filter for the union of the chunks' index sets.
All tensors of a step travel fused in one message per hop; bytes are counted
per rank from the hops actually simulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from horovod_scalecom.bytes_model import INDEX_BYTES, VALUE_BYTES
from horovod_scalecom.config import CLIP_RHO, ScaleComConfig, check_numel, num_selected
from horovod_scalecom.reference.clip import Levels
from horovod_scalecom.reference.core import (
    F32, accumulate, gather_and_update, scatter, topk_indices)
from horovod_scalecom.reference.workers import Workers
from horovod_scalecom.schedule import chunk_bounds, chunk_owner


@dataclass
class RingResult:
    """One tensor's result of a ring step."""

    outputs: list[np.ndarray]      # dense mean per rank (all equal)
    indices: np.ndarray            # union of the chunks' index sets, ascending
    chunk_indices: list[np.ndarray]


def ring_exchange(memories: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                  step: int, ratio: float, beta: float
                  ) -> tuple[RingResult, list[np.ndarray], np.ndarray]:
    """One tensor through the ring on n ranks.

    Returns (result, new memories, bytes sent per rank for this tensor).
    """
    n = len(grads)
    numel = np.asarray(grads[0]).size
    ps = [accumulate(m, g) for m, g in zip(memories, grads)]
    bounds = chunk_bounds(numel, n)
    sent = np.zeros(n, dtype=np.int64)

    chunk_idx: list[np.ndarray] = []
    chunk_sum: list[np.ndarray] = []
    for j in range(n):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        k_j = num_selected(hi - lo, ratio)
        owner = chunk_owner(j, step, n)
        local = topk_indices(ps[owner][lo:hi], k_j)
        idx = local.astype(np.int64) + lo
        acc = ps[owner][idx].copy()
        holder = owner
        for _ in range(n - 1):                      # reduce-scatter hops
            sent[holder] += (INDEX_BYTES + VALUE_BYTES) * k_j
            holder = (holder + 1) % n
            acc = acc + ps[holder][idx]
        for _ in range(n - 1):                      # allgather hops
            sent[holder] += VALUE_BYTES * k_j
            holder = (holder + 1) % n
        chunk_idx.append(idx.astype(np.int32))
        chunk_sum.append(acc)

    indices = np.concatenate(chunk_idx) if chunk_idx else np.zeros(0, np.int32)
    mean = np.concatenate(chunk_sum).astype(F32) / F32(n)
    out = scatter(indices, mean, numel)
    new_memories = []
    for m, g in zip(memories, grads):
        _, m_new = gather_and_update(m, g, indices, beta)
        new_memories.append(m_new)
    result = RingResult([out.copy() for _ in range(n)], indices, chunk_idx)
    return result, new_memories, sent


class RingSimulator(Workers):
    """All n workers of the ScaleCom ring in one process; one call per training step.

    ``step({name: [grad_rank0, ..., grad_rank{n-1}]})`` exchanges every
    tensor of the step (fused: one message per hop, so the byte counts add).
    Dense tensors (warm-up, numel < min_numel) are not part of the ring;
    they are returned as ``None`` and cost no ring bytes.
    """

    def __init__(self, size: int, config: ScaleComConfig | None = None) -> None:
        super().__init__(size, config)
        self.last_bytes = np.zeros(size, dtype=np.int64)
        self.levels = Levels(size, self.config.clip_factor, CLIP_RHO)

    def step(self, grads: Mapping[str, Sequence[np.ndarray]]
             ) -> dict[str, RingResult | None]:
        cfg = self.config
        sent = np.zeros(self.size, dtype=np.int64)
        results: dict[str, RingResult | None] = {}
        for name, per_rank in grads.items():
            flat = self._flat(name, per_rank)
            numel = flat[0].size
            check_numel(numel, name)
            mem, t = self._advance(name, numel)
            if t < cfg.warmup_steps or numel < cfg.min_numel:
                results[name] = None
                continue
            flat = self.levels.apply(name, flat)
            res, self.memory[name], tensor_sent = ring_exchange(
                mem, flat, t, cfg.ratio, cfg.beta)
            sent += tensor_sent
            results[name] = res
        self.last_bytes = sent
        return results
