"""Inputs and a bitwise comparison shared by the tests of the kernels' C ABI:
tests/test_cuda_abi.py (its host double) and tests/gpu/test_kernels.py (the GPU)."""

import numpy as np
import torch


def bits(x: torch.Tensor) -> np.ndarray:
    """Bit patterns, every NaN as one: a float16 NaN widens to 0x7fc00000 or
    0x7fffffff depending on the converter (torch's own CPU paths differ by
    tensor size), and no NaN payload carries meaning here."""
    values = x.float().cpu().numpy()
    b = values.view(np.uint32).copy()
    b[np.isnan(values)] = 0x7FC00000
    return b


def inputs(numel: int, dtype: torch.dtype, kind: str, seed: int = 0):
    """(memory, gradient) of one kind: normal, ties (few distinct magnitudes),
    zeros, or nonfinite (NaN, +Inf, -Inf every 40 entries: more of them than
    k, so some fall outside the selection, where the memory must refuse them)."""
    rng = np.random.default_rng(seed)
    if kind == "ties":
        m = rng.integers(-3, 4, numel).astype(np.float32)
        g = rng.integers(-3, 4, numel).astype(np.float32)
    elif kind == "zeros":
        m = np.zeros(numel, np.float32)
        g = np.zeros(numel, np.float32)
    else:
        m = rng.standard_normal(numel).astype(np.float32)
        g = rng.standard_normal(numel).astype(np.float32)
        if kind == "nonfinite":
            g[1::40] = np.nan
            g[2::40] = np.inf
            g[3::40] = -np.inf
    return torch.from_numpy(m), torch.from_numpy(g).to(dtype)
