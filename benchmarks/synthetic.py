"""Synthetic 10-class data for the examples and the convergence study (no download).

Labels come from a fixed random teacher (the same on every rank): the argmax
of a linear map plus a smaller nonlinear term, which a small MLP learns to
about 90% when trained well. Each rank draws its own inputs from its seed.
"""

import numpy as np


def make_data(seed: int, n: int, dim: int = 64, classes: int = 10):
    teacher = np.random.default_rng(1234)
    w = teacher.standard_normal((dim, classes)).astype(np.float32)
    w1 = teacher.standard_normal((dim, 32)).astype(np.float32) / np.sqrt(dim)
    w2 = teacher.standard_normal((32, classes)).astype(np.float32)
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x, np.argmax(x @ w + 0.5 * np.tanh(x @ w1) @ w2, axis=1)
