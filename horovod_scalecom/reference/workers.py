"""What every n-worker simulator keeps: the knobs, and per tensor each
worker's float32 memory and the tensor's step counter."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference.clip import refuse_clip_norm
from horovod_scalecom.reference.core import F32


class Workers:
    def __init__(self, size: int, config: ScaleComConfig | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.config = config or ScaleComConfig()
        refuse_clip_norm(self.config)
        self.memory: dict[str, list[np.ndarray]] = {}
        self.steps: dict[str, int] = {}

    def _flat(self, name: str, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        flat = [np.asarray(g).reshape(-1) for g in grads]
        if len(flat) != self.size:
            raise ValueError(f"{name}: expected {self.size} gradients, got {len(flat)}")
        return flat

    def _advance(self, name: str, numel: int) -> tuple[list[np.ndarray], int]:
        """The tensor's memories (zero at first sight) and the step now taken."""
        memory = self.memory.setdefault(name, [np.zeros(numel, dtype=F32)
                                               for _ in range(self.size)])
        t = self.steps.get(name, 0)
        self.steps[name] = t + 1
        return memory, t
