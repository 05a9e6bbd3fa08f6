"""What each exchange of the self-check must give: the NumPy reference's
averaged gradients for the workers' gradients, and the comparison.

The workers (:mod:`.exchange`) and the reference share the gradients below,
so the reference sees exactly what every rank fed in.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import HorovodPathSimulator, RingSimulator
from horovod_scalecom.reference.horovod_path import allreduce_mean

RANKS = 2
STEPS = 4
# Two tensors compressed, one of odd sizes, and a bias below min_numel that
# goes dense: both kinds of output in every exchange.
SHAPES: dict[str, tuple[int, ...]] = {"w1": (64, 48), "b1": (64,), "w2": (10, 64),
                                      "emb": (37, 29)}
CONFIG = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)

Outputs = dict[str, np.ndarray]      # "out/<step>/<name>" -> averaged gradient


def gradient(rank: int, step: int, index: int) -> np.ndarray:
    """The gradient rank ``rank`` feeds for tensor ``index`` at ``step``.
    Its scale changes from step to step so that ScaleCom's relative clip
    (on by default) acts in the check as it does in training."""
    shape = list(SHAPES.values())[index]
    rng = np.random.default_rng([rank, step, index])
    scale = np.float32((1.0, 4.0, 0.5, 8.0)[step % 4] * (1 + rank))
    return rng.standard_normal(shape).astype(np.float32) * scale


def _fed(step: int) -> dict[str, list[np.ndarray]]:
    return {name: [gradient(r, step, i) for r in range(RANKS)]
            for i, name in enumerate(SHAPES)}


def horovod_path() -> Outputs:
    """ScaleCom through Horovod's allreduce, and the DDP hook (the same
    exchange: one leader per step picks the indices every rank sends)."""
    sim = HorovodPathSimulator(RANKS, CONFIG)
    for name, shape in SHAPES.items():
        sim.register(name, int(np.prod(shape)))
    out: Outputs = {}
    for step in range(STEPS):
        for name, grads in _fed(step).items():
            out[f"out/{step}/{name}"] = sim.step(name, grads).outputs[0].reshape(SHAPES[name])
    return out


def ring() -> Outputs:
    """The ScaleCom ring; its dense tensors go through Horovod's allreduce."""
    sim = RingSimulator(RANKS, CONFIG)
    out: Outputs = {}
    for step in range(STEPS):
        fed = _fed(step)
        for name, result in sim.step(fed).items():
            mean = (allreduce_mean([g.reshape(-1) for g in fed[name]]) if result is None
                    else result.outputs[0])
            out[f"out/{step}/{name}"] = mean.reshape(SHAPES[name])
    return out


def compare(got: Mapping[str, Mapping[str, np.ndarray]], want: Outputs) -> list[str]:
    """Every difference between the ranks' outputs (``got[rank][key]``) and
    the reference's, one line each; empty when they agree. The support must
    be the same and the values equal to float32 rounding (the ranks may sum
    in another order than the reference on other MPIs)."""
    problems = []
    for rank, outputs in got.items():
        for key, expected in want.items():
            if key not in outputs:
                problems.append(f"rank {rank} returned no {key}")
                continue
            value = np.asarray(outputs[key], dtype=np.float32).reshape(expected.shape)
            if not np.array_equal(value != 0, expected != 0):
                wrong = int(np.count_nonzero((value != 0) != (expected != 0)))
                problems.append(f"rank {rank}, {key}: {wrong} entries selected differently "
                                "from the reference")
                continue
            scale = float(np.abs(expected).max(initial=0.0))
            error = float(np.abs(value - expected).max(initial=0.0))
            if not np.isfinite(error) or error > 1e-5 * scale + 1e-6:
                problems.append(f"rank {rank}, {key}: differs from the reference by up to "
                                f"{error:.3g} (largest entry {scale:.3g})")
    return problems
