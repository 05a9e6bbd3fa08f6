"""n-worker simulator of ScaleCom through Horovod's allreduce: CLT-k with a
cyclic leader + allreduce of k values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from horovod_scalecom import bytes_model
from horovod_scalecom.config import CLIP_RHO, ScaleComConfig, check_numel
from horovod_scalecom.reference.clip import Levels, refuse_clip_norm
from horovod_scalecom.reference.core import (
    F32, accumulate, gather_and_update, scatter, topk_indices)
from horovod_scalecom.schedule import leader


def allreduce_mean(values: Sequence[np.ndarray]) -> np.ndarray:
    """Sum in rank order in float32, then divide by n (the canonical mean)."""
    total = np.array(values[0], dtype=F32, copy=True)
    for v in values[1:]:
        total = total + np.asarray(v, dtype=F32)
    return total / F32(len(values))


@dataclass
class StepResult:
    """What every worker holds after one step of one tensor."""

    outputs: list[np.ndarray]          # dense averaged gradient, per worker (all equal)
    indices: np.ndarray | None         # shared index set, None on a dense step
    leader: int | None
    bytes_sent: list[float]            # per worker, by the byte model


@dataclass
class _TensorState:
    offset: int
    numel: int
    step: int = 0
    memory: list[np.ndarray] = field(default_factory=list)


class HorovodPathSimulator:
    """All n workers of ScaleCom through Horovod's allreduce (the Horovod
    compressor) in one process, tensor by tensor.

    ``step(name, grads)`` takes the n workers' gradients of one tensor and
    returns what each worker's ``decompress`` would hand back. Tensors are
    registered on first sight, in order, which fixes their leader offset.
    """

    def __init__(self, size: int, config: ScaleComConfig | None = None,
                 stagger: bool = False) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.config = config or ScaleComConfig()
        refuse_clip_norm(self.config)
        self.stagger = stagger or self.config.stagger_leaders
        self.tensors: dict[str, _TensorState] = {}
        self.levels = Levels(size, self.config.clip_factor, CLIP_RHO)

    def register(self, name: str, numel: int) -> _TensorState:
        if name not in self.tensors:
            check_numel(numel, name)
            offset = len(self.tensors) if self.stagger else 0
            self.tensors[name] = _TensorState(
                offset=offset, numel=numel,
                memory=[np.zeros(numel, dtype=F32) for _ in range(self.size)])
        state = self.tensors[name]
        if state.numel != numel:
            raise ValueError(f"{name}: numel changed from {state.numel} to {numel}")
        return state

    def memory(self, name: str, rank: int) -> np.ndarray:
        return self.tensors[name].memory[rank]

    def step(self, name: str, grads: Sequence[np.ndarray]) -> StepResult:
        if len(grads) != self.size:
            raise ValueError(f"expected {self.size} gradients, got {len(grads)}")
        flat = [np.asarray(g).reshape(-1) for g in grads]
        state = self.register(name, flat[0].size)
        cfg = self.config
        t = state.step
        state.step += 1
        dense = (t < cfg.warmup_steps or state.numel < cfg.min_numel
                 or not np.issubdtype(flat[0].dtype, np.floating))
        if dense:
            out = allreduce_mean([g.astype(F32) for g in flat])
            nbytes = bytes_model.dense_ring_allreduce(state.numel, self.size)
            return StepResult([out.copy() for _ in flat], None, None, [nbytes] * self.size)

        flat = self.levels.apply(name, flat)
        lead = leader(t, state.offset, self.size)
        k = cfg.k(state.numel)
        idx = topk_indices(accumulate(state.memory[lead], flat[lead]), k)
        values = []
        for r in range(self.size):
            c, state.memory[r] = gather_and_update(state.memory[r], flat[r], idx, cfg.beta)
            values.append(c)
        out = scatter(idx, allreduce_mean(values), state.numel)
        nbytes = bytes_model.horovod_path(k, self.size)
        return StepResult([out.copy() for _ in flat], idx, lead, [nbytes] * self.size)
