"""One worker's ScaleCom arithmetic, in the canonical float32 order.

Every kernel (C++, CUDA) reproduces these functions bit for bit:

    p   = m + g                          (float32)
    I   = top-k of |p|, ties -> lower index, returned ascending
    c   = p[I]
    m_j = m_j + beta32 * g_j             for j not in I
    m_j = decay32 * m_j                  for j in I     (decay32 = 1 - beta32 in float32)

Non-finite policy: where m_j + beta32 * g_j is NaN or Inf the memory entry
keeps its value, so a bad gradient never poisons the memory; a selected
non-finite p_j still reaches c and the output, where the caller sees it.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=F32).reshape(-1)


def accumulate(memory: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """p = m + g in float32 (g of a lower precision is widened first)."""
    return _as_f32(memory) + _as_f32(grad)


def topk_indices(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest |p|, ties broken towards the lower index, ascending.

    Exact, not approximate. NaN counts as larger than any number (its |.| bit
    pattern sorts above +inf), so a NaN gradient is selected and shows up in
    the output rather than hiding in the memory.
    """
    p = _as_f32(p)
    if not 0 <= k <= p.size:
        raise ValueError(f"k={k} outside [0, {p.size}]")
    if k == 0:
        return np.zeros(0, dtype=np.int32)
    # The bits of |p| as uint32 order exactly like |p| (and put NaN on top).
    keys = (p.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)
    # Stable sort on -key: equal keys keep ascending index order.
    order = np.argsort(-keys, kind="stable")[:k]
    return np.sort(order).astype(np.int32)


def gather_and_update(memory: np.ndarray, grad: np.ndarray, indices: np.ndarray,
                      beta: float) -> tuple[np.ndarray, np.ndarray]:
    """c = (m + g)[I] and the low-pass memory update, as a new memory array.

    Returns (c, new_memory). ``indices`` must be ascending and unique.
    Non-finite updates are not absorbed (see the module docstring).
    """
    m = _as_f32(memory).copy()
    g = _as_f32(grad)
    idx = np.asarray(indices, dtype=np.int64)
    beta32 = F32(beta)
    decay32 = F32(F32(1.0) - beta32)
    with np.errstate(over="ignore", invalid="ignore"):
        c = m[idx] + g[idx]
    rest = np.ones(m.size, dtype=bool)
    rest[idx] = False
    with np.errstate(over="ignore", invalid="ignore"):   # non-finite values are handled
        updated = m[rest] + beta32 * g[rest]
    # Non-finite policy: a NaN/Inf never enters the memory (it still reaches c).
    m[rest] = np.where(np.isfinite(updated), updated, m[rest])
    m[idx] = decay32 * m[idx]
    return c, m


def scatter(indices: np.ndarray, values: np.ndarray, numel: int) -> np.ndarray:
    """Dense float32 vector with ``values`` at ``indices`` and zeros elsewhere."""
    out = np.zeros(numel, dtype=F32)
    out[np.asarray(indices, dtype=np.int64)] = values
    return out
