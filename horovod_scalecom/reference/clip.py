"""The relative clip of one worker's gradient, in the canonical order of
csrc/core/clip.h (the C++ core reproduces these numbers bit for bit).

Before a compressed tensor's gradient ``g`` reaches the memory, each worker
scales it so that its norm is at most ``factor`` times a running level of its
own past norms:

    norm  = ||g||                        (float64, fixed summation order)
    limit = factor * level
    g     = float32(limit / norm) * g    where norm > limit
    level = rho * level + (1 - rho) * min(norm, limit)

The level starts at the first positive finite norm. With factor 1 it only
follows the norm down, at the pace of rho; with factor > 1 it may rise by a
factor (rho + (1 - rho) * factor) per step. A NaN/Inf or zero norm leaves the
gradient and the level alone (the divergence guard reports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from horovod_scalecom.reference.core import F32

NORM_BLOCK = 4096
NORM_LANES = 8


def sum_squares(x: np.ndarray) -> float:
    """Sum of squares in float64 in the order of csrc/core/clip.h: blocks of
    4096, eight interleaved lanes per block, lanes then blocks added in turn.
    ``np.cumsum`` adds strictly left to right, which is what makes it exact."""
    x = np.ascontiguousarray(x, dtype=F32).reshape(-1).astype(np.float64)
    if x.size == 0:
        return 0.0
    blocks = -(-x.size // NORM_BLOCK)
    padded = np.zeros(blocks * NORM_BLOCK)      # + 0.0 leaves a sum unchanged
    padded[:x.size] = x * x
    lanes = np.cumsum(padded.reshape(blocks, NORM_BLOCK // NORM_LANES, NORM_LANES), axis=1)[:, -1]
    block_sums = np.cumsum(lanes, axis=1)[:, -1]
    return float(np.cumsum(block_sums)[-1])


@dataclass(frozen=True)
class ClipStep:
    norm: float        # before clipping
    level: float       # after this step
    scale: np.float32  # 1 when not clipped


def clip_step(sum_sq: float, level: float, factor: float, rho: float) -> ClipStep:
    """One step of the relative clip; ``level`` is NaN before the first.
    ``factor`` 0: no clip, the level follows the norm (for the guard)."""
    norm = math.sqrt(sum_sq)
    one = F32(1.0)
    if not math.isfinite(norm) or norm == 0.0:
        return ClipStep(norm, level, one)
    if not level > 0.0:
        return ClipStep(norm, norm, one)
    if factor <= 0.0:
        return ClipStep(norm, rho * level + (1.0 - rho) * norm, one)
    limit = factor * level
    if norm > limit:
        return ClipStep(norm, rho * level + (1.0 - rho) * limit, F32(limit / norm))
    return ClipStep(norm, rho * level + (1.0 - rho) * norm, one)


def relative_clip(grad: np.ndarray, level: float, factor: float,
                  rho: float) -> tuple[np.ndarray, ClipStep]:
    """The clipped float32 gradient and the step's figures."""
    g = np.ascontiguousarray(grad, dtype=F32).reshape(-1)
    step = clip_step(sum_squares(g), level, factor, rho)
    return (g * step.scale if step.scale != 1 else g), step


def refuse_clip_norm(config) -> None:
    """The simulators take each worker's gradient as it reaches ScaleCom:
    ``clip_norm`` (a norm taken by each framework in its own order) is the
    caller's to apply first, so a config that sets it is refused rather than
    silently ignored."""
    if config.clip_norm is not None:
        raise ValueError("the reference simulators do not apply clip_norm: give them each "
                         "worker's gradients already scaled to it, and clip_norm=None")


class Levels:
    """Each worker's clip level per tensor, for the n-worker simulators."""

    def __init__(self, size: int, factor: float | None, rho: float) -> None:
        self.size = size
        self.factor = 0.0 if factor is None else float(factor)
        self.rho = rho
        self.level: dict[str, list[float]] = {}
        self.last: dict[str, list[ClipStep]] = {}

    def apply(self, name: str, grads: list[np.ndarray]) -> list[np.ndarray]:
        """The n workers' gradients of one compressed step, clipped."""
        levels = self.level.setdefault(name, [math.nan] * self.size)
        out, steps = [], []
        for r, g in enumerate(grads):
            clipped, step = relative_clip(g, levels[r], self.factor, self.rho)
            levels[r] = step.level
            out.append(clipped)
            steps.append(step)
        self.last[name] = steps
        return out
