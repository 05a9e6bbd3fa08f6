"""What a plan concludes: speedups, where ScaleCom stops paying, which ratio.

* speedup: dense's predicted step over the method's, same cluster.
* break-even bandwidth: the link rate at which the method's predicted step
  equals dense's. Below it ScaleCom's fewer bytes win; above it its
  selection and memory update cost more than the bytes they save. Found by
  bisection on the logarithm of the rate between 1 Mbit/s and 100 Tbit/s.
* recommended ratio: the largest ratio (the least compression, the least
  gradient held back in the memory; docs/convergence.md) whose predicted
  step is within ``slack`` of the fastest among RATIOS.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from horovod_scalecom.plan.constants import Constants
from horovod_scalecom.plan.model import DENSE, Cluster, Settings, predict

RATIOS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.0025, 0.001)
LOWEST_GBIT, HIGHEST_GBIT = 1e-3, 1e5


def speedup(method: str, shapes, cluster: Cluster, c: Constants, settings: Settings) -> float:
    dense = predict(DENSE, shapes, cluster, c, settings).step_s
    return dense / predict(method, shapes, cluster, c, settings).step_s


def break_even_gbit(method: str, shapes, cluster: Cluster, c: Constants,
                    settings: Settings) -> float | None:
    """The rate (Gbit/s) where ``method``'s step equals dense's: ``math.inf``
    if the method is faster at every rate up to HIGHEST_GBIT, None if it is
    faster at none down to LOWEST_GBIT."""

    def gap(gbit: float) -> float:
        at = cluster.at(gbit)
        return (predict(method, shapes, at, c, settings).step_s
                - predict(DENSE, shapes, at, c, settings).step_s)

    if gap(LOWEST_GBIT) >= 0:
        return None
    if gap(HIGHEST_GBIT) < 0:
        return math.inf
    lo, hi = math.log(LOWEST_GBIT), math.log(HIGHEST_GBIT)
    for _ in range(60):
        mid = (lo + hi) / 2
        if gap(math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def recommended_ratio(method: str, shapes, cluster: Cluster, c: Constants, settings: Settings,
                      ratios: Sequence[float] = RATIOS, slack: float = 0.05) -> float:
    steps = {r: predict(method, shapes, cluster, c, replace(settings, ratio=r,
                                                            hook_ratio=None)).step_s
             for r in ratios}
    best = min(steps.values())
    return max(r for r, step in steps.items() if step <= (1 + slack) * best)
