"""n-worker simulator of the baseline ScaleCom is measured against: local top-k
with allgather and classic error feedback (the GRACE / DGC scheme).

Each worker r picks the top-k of its own p_r = m_r + g_r, sends those k
(index, value) pairs to every other worker, and keeps the rest as its memory
(m_r = p_r with the selected entries zeroed). The output is the mean of the n
scattered vectors, so up to n*k entries are non-zero and each worker receives
(n - 1) * k pairs: the cost that grows with n and that CLT-k removes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from horovod_scalecom import bytes_model
from horovod_scalecom.reference.core import F32, accumulate, topk_indices
from horovod_scalecom.reference.horovod_path import StepResult, allreduce_mean
from horovod_scalecom.reference.workers import Workers


class TopkAllgatherSimulator(Workers):
    """All n workers of local top-k + allgather in one process, tensor by tensor.

    Uses ``config.ratio``, ``warmup_steps`` and ``min_numel`` like ScaleCom;
    ``beta`` is ignored (the memory is plain error feedback).
    """

    def step(self, name: str, grads: Sequence[np.ndarray]) -> StepResult:
        flat = [g.astype(F32, copy=False) for g in self._flat(name, grads)]
        numel = flat[0].size
        memory, t = self._advance(name, numel)
        cfg = self.config
        if t < cfg.warmup_steps or numel < cfg.min_numel:
            out = allreduce_mean(flat)
            nbytes = bytes_model.dense_ring_allreduce(numel, self.size)
            return StepResult([out.copy() for _ in flat], None, None, [nbytes] * self.size)
        k = cfg.k(numel)
        scattered = []
        for r in range(self.size):
            p = accumulate(memory[r], flat[r])
            idx = topk_indices(p, k)
            dense = np.zeros(numel, F32)
            dense[idx] = p[idx]
            p[idx] = 0.0
            memory[r] = p
            scattered.append(dense)
        out = allreduce_mean(scattered)
        nbytes = bytes_model.topk_allgather(k, self.size)
        return StepResult([out.copy() for _ in flat], None, None, [nbytes] * self.size)
