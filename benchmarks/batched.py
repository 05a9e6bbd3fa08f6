"""The Horovod path's n workers as one (n, numel) array per tensor, for
large-n studies: the reference's arithmetic, bit for bit, without its loop
over workers.

``HorovodPathSimulator`` (horovod_scalecom.reference) steps each worker's
memory in turn; at n = 64 that loop, not the arithmetic, is what a study
waits for. Here every elementwise step runs on all rows at once in the same
float32 operations, the sums keep the reference's order (the clip's blocks
and lanes per row, the allreduce in rank order), and the leader's top-k is
the reference's own function, so the outputs and memories are the
reference's to the bit (tests/test_benchmarks.py checks it).

``layer_k`` gives a per-layer k other than the config's ratio x numel, a
remedy of docs/convergence.md's study: a floor on every compressed
tensor's k, or the ratio's total k shared out by sqrt(numel). Passed as
``BatchedHorovodPath(k=...)``; without it the path is the reference's.
``LayerKTopk`` is the reference's top-k + allgather baseline with the same
per-layer k.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from horovod_scalecom import bytes_model
from horovod_scalecom.config import CLIP_RHO, ScaleComConfig, check_numel
from horovod_scalecom.reference.clip import NORM_BLOCK, NORM_LANES, clip_step, refuse_clip_norm
from horovod_scalecom.reference.core import F32, topk_indices
from horovod_scalecom.reference.horovod_path import StepResult
from horovod_scalecom.reference.topk_allgather import TopkAllgatherSimulator
from horovod_scalecom.schedule import leader


def sum_squares_rows(x: np.ndarray) -> np.ndarray:
    """reference.clip.sum_squares of every row of ``x``, in the same order:
    each lane of a block left to right, then the lanes in turn, then the
    blocks in turn."""
    rows, numel = x.shape
    if numel == 0:
        return np.zeros(rows)
    blocks = -(-numel // NORM_BLOCK)
    squares = np.zeros((rows, blocks * NORM_BLOCK))
    np.square(x, out=squares[:, :numel], dtype=np.float64)
    # Reducing a non-contiguous axis, numpy (1.26's iterator) adds the slices
    # one after the other; pairwise summation is only for the contiguous axis.
    # So each lane is summed left to right, as the reference's cumsum does:
    # tests/test_benchmarks.py checks it bit for bit.
    lanes = squares.reshape(rows, blocks, NORM_BLOCK // NORM_LANES, NORM_LANES).sum(axis=2)
    per_block = lanes[:, :, 0]
    for lane in range(1, NORM_LANES):
        per_block = per_block + lanes[:, :, lane]
    total = per_block[:, 0]
    for block in range(1, blocks):
        total = total + per_block[:, block]
    return total


def rank_order_mean(rows: np.ndarray) -> np.ndarray:
    """reference.horovod_path.allreduce_mean: the sum in rank order, then / n."""
    total = rows[0].copy()
    for row in rows[1:]:
        total = total + row
    return total / F32(len(rows))


K_POLICIES = ("ratio", "floor", "equal-bytes")


def layer_k(numels: Mapping[str, int], config: ScaleComConfig, policy: str = "ratio",
            k_floor: int = 32) -> dict[str, int]:
    """k for every tensor of ``numels`` that ScaleCom compresses (numel >= min_numel).

    * ``ratio``: the config's k = max(1, ceil(ratio x numel)), the library's rule;
    * ``floor``: max(k_floor, the ratio's k), at most numel: more bytes;
    * ``equal-bytes``: the ratio's total k over these tensors, shared in
      proportion to sqrt(numel) (largest remainders, ties in name order), so
      small tensors get more and large ones less at the same bytes.
    """
    if policy not in K_POLICIES:
        raise ValueError(f"unknown k policy {policy!r}; choose one of {', '.join(K_POLICIES)}")
    if k_floor < 1:
        raise ValueError(f"k_floor must be >= 1, got {k_floor}")
    sizes = {name: int(n) for name, n in numels.items() if n >= config.min_numel}
    ks = {name: config.k(n) for name, n in sizes.items()}
    if policy == "floor":
        return {name: min(sizes[name], max(k_floor, k)) for name, k in ks.items()}
    if policy == "ratio" or not ks:
        return ks
    budget, weights = sum(ks.values()), {name: math.sqrt(n) for name, n in sizes.items()}
    total = sum(weights.values())
    quota = {name: budget * w / total for name, w in weights.items()}
    shared = {name: max(1, math.floor(q)) for name, q in quota.items()}
    # The remainder goes to the largest fractional parts (taken back from the
    # smallest where the floor of 1 overspent), so the total is the budget.
    by_fraction = sorted(sizes, key=lambda name: (shared[name] - quota[name], name))
    left = budget - sum(shared.values())
    for name in by_fraction[:max(left, 0)]:
        shared[name] += 1
    for name in reversed(by_fraction):
        if left >= 0:
            break
        if shared[name] > 1:
            shared[name], left = shared[name] - 1, left + 1
    over = [name for name in sizes if shared[name] > sizes[name]]
    if over:
        raise ValueError(f"equal-bytes would give {', '.join(over)} more than its numel values; "
                         "use a smaller ratio")
    return shared


@dataclasses.dataclass(frozen=True)
class _TensorK(ScaleComConfig):
    """A config whose k is one tensor's, whatever the numel."""
    fixed_k: int = 0

    def k(self, numel: int) -> int:
        return self.fixed_k


class LayerKTopk(TopkAllgatherSimulator):
    """The reference's local top-k + allgather, with ``k`` (from ``layer_k``)
    per tensor; a tensor it does not name takes the config's ratio x numel."""

    def __init__(self, size: int, config: ScaleComConfig, k: Mapping[str, int]) -> None:
        super().__init__(size, config)
        self.base = self.config
        knobs = {f.name: getattr(config, f.name) for f in dataclasses.fields(ScaleComConfig)}
        self.per_tensor = {name: _TensorK(**knobs, fixed_k=v) for name, v in k.items()}

    def step(self, name: str, grads: Sequence[np.ndarray]) -> StepResult:
        # The reference reads its k from self.config: that tensor's, for this step.
        self.config = self.per_tensor.get(name, self.base)
        return super().step(name, grads)


class _Levels:
    """The relative clip's per-worker levels, as reference.clip.Levels keeps them."""

    def __init__(self, size: int, factor: float | None) -> None:
        self.size, self.factor = size, 0.0 if factor is None else float(factor)
        self.level: dict[str, list[float]] = {}
        self.last: dict[str, list] = {}

    def apply(self, name: str, grads: np.ndarray) -> np.ndarray:
        levels = self.level.setdefault(name, [math.nan] * self.size)
        steps = [clip_step(float(s), levels[r], self.factor, CLIP_RHO)
                 for r, s in enumerate(sum_squares_rows(grads))]
        self.level[name] = [s.level for s in steps]
        self.last[name] = steps
        scales = np.array([s.scale for s in steps], dtype=F32)
        return grads * scales[:, None] if (scales != 1).any() else grads


class _Tensor:
    def __init__(self, offset: int, numel: int, size: int) -> None:
        self.offset, self.numel, self.step = offset, numel, 0
        self.memory = np.zeros((size, numel), dtype=F32)    # row r: worker r's memory


class BatchedHorovodPath:
    """``HorovodPathSimulator``'s numbers and its ``step``, all workers at
    once. ``tensors[name].memory`` is an (n, numel) array, row r worker r's
    memory; ``levels`` holds the clip levels as the reference's does.
    ``k`` (from ``layer_k``) sets a tensor's k in place of the config's
    ratio x numel; a tensor it does not name takes the config's."""

    def __init__(self, size: int, config: ScaleComConfig | None = None,
                 memory_beta: float = 0.0, k: Mapping[str, int] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.config = config or ScaleComConfig()
        refuse_clip_norm(self.config)
        self.tensors: dict[str, _Tensor] = {}
        self.levels = _Levels(size, self.config.clip_factor)
        # A remedy of docs/convergence.md's screening: a worker whose memory
        # holds more than ``memory_beta`` clip levels takes in less of its new
        # residue, to bound the burst a late selection releases.
        self.memory_beta = memory_beta
        self.k = dict(k or {})

    def step(self, name: str, grads: Sequence[np.ndarray]) -> StepResult:
        g = np.stack([np.asarray(x).reshape(-1) for x in grads])
        if g.shape[0] != self.size:
            raise ValueError(f"expected {self.size} gradients, got {g.shape[0]}")
        state = self.tensors.get(name)
        if state is None:
            check_numel(g.shape[1], name)
            offset = len(self.tensors) if self.config.stagger_leaders else 0
            state = self.tensors[name] = _Tensor(offset, g.shape[1], self.size)
        if state.numel != g.shape[1]:
            raise ValueError(f"{name}: numel changed from {state.numel} to {g.shape[1]}")
        cfg, t = self.config, state.step
        state.step += 1
        if (t < cfg.warmup_steps or state.numel < cfg.min_numel
                or not np.issubdtype(g.dtype, np.floating)):
            out = rank_order_mean(g.astype(F32))
            nbytes = bytes_model.dense_ring_allreduce(state.numel, self.size)
            return StepResult([out.copy() for _ in range(self.size)], None, None,
                              [nbytes] * self.size)
        g = self.levels.apply(name, g.astype(F32, copy=False))
        lead = leader(t, state.offset, self.size)
        k = self.k[name] if name in self.k else cfg.k(state.numel)
        m = state.memory
        idx = topk_indices(m[lead] + g[lead], k)
        beta32, decay32 = self._betas(name, m)
        with np.errstate(over="ignore", invalid="ignore"):
            c = m[:, idx] + g[:, idx]
            updated = m + beta32 * g
        # The reference's non-finite policy: such an update leaves the entry alone.
        fresh = np.where(np.isfinite(updated), updated, m)
        fresh[:, idx] = decay32 * m[:, idx]
        state.memory = fresh
        out = np.zeros(state.numel, dtype=F32)
        out[idx.astype(np.int64)] = rank_order_mean(c)
        nbytes = bytes_model.horovod_path(k, self.size)
        return StepResult([out.copy() for _ in range(self.size)], idx, lead,
                          [nbytes] * self.size)

    def _betas(self, name: str, m: np.ndarray):
        """beta and 1 - beta in float32: the config's, or per worker (a column)."""
        if not self.memory_beta:
            return self.config.beta32, self.config.decay32
        norms = np.sqrt(sum_squares_rows(m))
        levels = np.array(self.levels.level[name])
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(norms > 0, np.minimum(self.config.beta,
                                                  self.memory_beta * levels / norms),
                            self.config.beta)
        beta = np.where(np.isfinite(beta) & (beta > 0), beta, self.config.beta)
        beta32 = beta.astype(F32)[:, None]
        return beta32, (F32(1.0) - beta32)
