"""Why CLT-k loses accuracy: per-step figures of one compressed tensor.

Taken before the step updates the memories, from the n workers'
p_r = m_r + g_r (g_r as it reaches the memory, after the relative clip) and
the leader's index set I:

* ``overlap_own``: |I & topk(p_r)| / k, averaged over workers: how alike the
  leader's choice and each worker's own choice are (the paper's similarity
  argument; 1 would be identical sets, k / numel is chance).
* ``overlap_mean``: |I & topk(mean_r p_r)| / k: how close CLT-k comes to the
  top-k that a single machine holding every gradient would take.
* ``captured``: ||(mean_r p_r)[I]||^2 / ||mean_r p_r||^2, the share of the
  accumulated gradient's energy that this step delivers.
* ``memory_ratio``: ||mean_r m_r|| / ||mean_r g_r|| with the memories after
  the step, how many steps' worth of gradient they hold.
* ``lag``: ||sum over steps of (mean_r g_r - output)|| / ||mean_r g_r||, how
  many steps' worth of gradient the optimizer has not been handed yet. In
  exact arithmetic it is the mean memory divided by beta (with a constant
  beta and no update refused as non-finite): the filter takes in only beta of an
  unsent entry and keeps 1 - beta of a sent entry's memory for its next
  selections, so an entry's gradient arrives over about 1 / beta of its
  selections, and the rarer the selections (small ratio, large n), the
  later.
"""

from __future__ import annotations

import numpy as np

FIGURES = ("overlap_own", "overlap_mean", "captured", "memory_ratio", "lag")


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-np.abs(x), k - 1)[:k]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def step_figures(memories: list[np.ndarray], grads: list[np.ndarray], indices: np.ndarray,
                 lag: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """The figures above for one step of one tensor: ``memories`` before the
    step, ``after`` their mean after it, ``lag`` the summed difference with
    this step included."""
    k = len(indices)
    p = [m + g for m, g in zip(memories, grads)]
    p_mean = np.mean(p, axis=0)
    g_mean = np.mean(grads, axis=0)
    chosen = set(indices.tolist())
    g_norm = float(np.linalg.norm(g_mean))
    return {
        "overlap_own": float(np.mean([len(chosen.intersection(_topk(q, k).tolist())) / k
                                      for q in p])),
        "overlap_mean": len(chosen.intersection(_topk(p_mean, k).tolist())) / k,
        "captured": _ratio(float(np.sum(p_mean[indices] ** 2)), float(np.sum(p_mean ** 2))),
        "memory_ratio": _ratio(float(np.linalg.norm(after)), g_norm),
        "lag": _ratio(float(np.linalg.norm(lag)), g_norm),
    }


class Tracker:
    """Figures per tensor, sampled every few steps, summarised per run."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}

    def add(self, name: str, figures: dict[str, float]) -> None:
        rows = self.samples.setdefault(name, {f: [] for f in FIGURES})
        for f in FIGURES:
            rows[f].append(figures[f])

    def summary(self) -> dict[str, dict[str, float]]:
        """Per tensor, the mean of each figure over the run and over its last quarter."""
        out = {}
        for name, rows in self.samples.items():
            last = max(1, len(rows[FIGURES[0]]) // 4)
            out[name] = {**{f: float(np.nanmean(v)) for f, v in rows.items()},
                         **{f + "_late": float(np.nanmean(v[-last:])) for f, v in rows.items()}}
        return out
