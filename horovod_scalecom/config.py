"""ScaleCom's policy, one for every frontend (torch and TensorFlow; the
Horovod compressor, the ring and the DDP hook): the knobs with their names,
defaults and checks, which gradients go dense, what every rank must agree
on, and the L2 clip's rule. The frameworks apply it with their own ops;
the names, defaults and error messages are these."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

# Indices travel as int32 (docs/algorithm.md).
MAX_NUMEL = 2**31 - 1

# The relative clip (docs/algorithm.md): each worker's gradient of a
# compressed tensor is clipped to clip_factor times a running level of its
# norm, an average over about 1 / (1 - CLIP_RHO) steps. Chosen by the study
# of docs/convergence.md (its screening and "Digits under the Horovod recipe").
DEFAULT_CLIP_FACTOR = 2.0
CLIP_RHO = 0.98

# clip_norm's rule: g * min(1, clip_norm / (||g|| + CLIP_NORM_EPS)).
CLIP_NORM_EPS = 1e-6

# Gradients of other dtypes (float64, integers, complex) always go dense.
COMPRESSIBLE_DTYPES = ("float32", "float16", "bfloat16")

# The knobs every rank must share, in the order of agreement_row().
AGREED = ("ratio", "beta", "warmup_steps", "min_numel", "stagger_leaders", "clip_norm",
          "clip_factor")


def num_selected(numel: int, ratio: float) -> int:
    """k = max(1, ceil(ratio * numel)) for a non-empty tensor, 0 for an empty one."""
    if numel <= 0:
        return 0
    return min(numel, max(1, math.ceil(ratio * numel)))


def positive_number(value, name: str) -> float:
    """``value`` as a float; ValueError unless it is a positive real number (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def disagreement(names: Sequence[str], every) -> str | None:
    """Where ranks' knobs differ, for an error message: ``every`` holds one
    row per rank (an allgather of the same values on each), one column per
    name. None when every row is the same; else "ratio, beta (rank 0: ratio
    0.01, beta 0.1; rank 1: ...)", naming only the columns that differ."""
    every = np.asarray(every, dtype=np.float64)
    differ = [j for j in range(every.shape[1]) if not (every[:, j] == every[0, j]).all()]
    if not differ:
        return None
    rows = "; ".join(f"rank {r}: " + ", ".join(f"{names[j]} {every[r, j]:.10g}" for j in differ)
                     for r in range(every.shape[0]))
    return f"{', '.join(names[j] for j in differ)} ({rows})"


def dtype_name(dtype) -> str:
    """"float32" for torch.float32, tf.float32 and numpy's float32 alike."""
    name = getattr(dtype, "name", None)        # TensorFlow's and numpy's dtypes
    if isinstance(name, str):
        return name
    if isinstance(dtype, type):                # numpy's scalar types
        return np.dtype(dtype).name
    return str(dtype).rsplit(".", 1)[-1]       # torch.float32


def check_numel(numel: int, name: str = "tensor") -> None:
    if numel > MAX_NUMEL:
        raise ValueError(
            f"{name} has {numel} elements; ScaleCom indexes with int32 and "
            f"supports at most {MAX_NUMEL} elements per tensor. Split the "
            f"parameter or keep it dense with min_numel/exclusion.")


@dataclass(frozen=True)
class ScaleComConfig:
    """ScaleCom's knobs, the same names and defaults in every frontend.

    Args:
        ratio: fraction rho of each tensor's elements that is sent, 0 < rho <= 1
            ("100x" compression is ratio=0.01).
        beta: low-pass filter coefficient in (0, 1]; 1 is classic error
            feedback, the paper's and the default 0.1. The optimizer waits
            for the memory divided by beta: with a normal learning rate a
            larger beta trains better, under the Horovod recipe (lr x n) 0.1
            is the stable one (docs/convergence.md).
        warmup_steps: the first ``warmup_steps`` exchanges of each tensor are
            dense and leave the memory untouched.
        min_numel: tensors with fewer elements are sent dense.
        clip_factor: each worker clips its gradient of each compressed tensor
            to ``clip_factor`` times the running level of that gradient's
            norm before it reaches the memory (csrc/core/clip.h); None turns
            the clip off.
        clip_norm: if set, each worker first scales every floating gradient
            it hands to ScaleCom to L2 norm at most ``clip_norm``
            (``g * min(1, clip_norm / (||g|| + 1e-6))``), before the memory
            and the exchange: an absolute threshold, off by default.
        stagger_leaders: offset each tensor's leader by its registration
            index (False: the paper's schedule, one leader per step).
        share_timeout: seconds any wait for another rank (an index share, a
            ring message, the configuration check) may take before ScaleCom
            raises instead of hanging.
    """

    ratio: float = 0.01
    beta: float = 0.1
    warmup_steps: int = 0
    min_numel: int = 1024
    clip_factor: float | None = DEFAULT_CLIP_FACTOR
    clip_norm: float | None = None
    stagger_leaders: bool = False
    share_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.clip_factor is not None and (
                isinstance(self.clip_factor, bool) or not isinstance(self.clip_factor, (int, float))
                or not self.clip_factor >= 1.0 or math.isinf(self.clip_factor)):
            raise ValueError(
                f"clip_factor must be a number >= 1 or None (no clip), got {self.clip_factor!r}: "
                "below 1 the level, and with it every gradient, would shrink step after step")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise TypeError(f"ratio must be a number, got {self.ratio!r}")
        if not (0.0 < float(self.ratio) <= 1.0) or math.isnan(self.ratio):
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio!r} "
                             f"(ratio=0.01 sends 1% of each tensor)")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)):
            raise TypeError(f"beta must be a number, got {self.beta!r}")
        if not (0.0 < float(self.beta) <= 1.0) or math.isnan(self.beta):
            raise ValueError(f"beta must lie in (0, 1], got {self.beta!r} "
                             f"(1 = classic error feedback, 0.1 = the paper's filter)")
        for field in ("warmup_steps", "min_numel"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
        if self.clip_norm is not None:
            positive_number(self.clip_norm, "clip_norm")
        if not isinstance(self.stagger_leaders, (bool, np.bool_)):
            raise TypeError(f"stagger_leaders must be True or False, got {self.stagger_leaders!r}")
        positive_number(self.share_timeout, "share_timeout")

    @property
    def beta32(self) -> np.float32:
        """beta rounded to float32: the value every kernel multiplies by."""
        return np.float32(self.beta)

    @property
    def decay32(self) -> np.float32:
        """1 - beta, computed in float32 from beta32 (canonical arithmetic)."""
        return np.float32(np.float32(1.0) - self.beta32)

    @property
    def clip_factor_or_zero(self) -> float:
        """clip_factor as the core takes it: 0.0 for no clip."""
        return 0.0 if self.clip_factor is None else float(self.clip_factor)

    def k(self, numel: int) -> int:
        return num_selected(numel, self.ratio)

    def always_dense(self, numel: int | None, dtype) -> bool:
        """Tensors of unknown size, below ``min_numel`` or of a dtype outside
        COMPRESSIBLE_DTYPES are never compressed."""
        return (numel is None or numel < self.min_numel
                or dtype_name(dtype) not in COMPRESSIBLE_DTYPES)

    def goes_dense(self, step: int, numel: int | None, dtype) -> bool:
        """This exchange of the tensor is dense: warm-up, or always_dense."""
        return step < self.warmup_steps or self.always_dense(numel, dtype)

    def agreement_row(self) -> tuple[float, ...]:
        """The AGREED knobs as numbers, for the cross-rank check (None: 0)."""
        return (self.ratio, self.beta, self.warmup_steps, self.min_numel,
                float(self.stagger_leaders), self.clip_norm or 0.0, self.clip_factor_or_zero)

    def as_dict(self) -> dict:
        return asdict(self)


# The defaults every frontend's signature takes (tests/test_api.py checks them).
DEFAULTS = ScaleComConfig()


def disagreement_error(names: Sequence[str], every, what: str = "") -> ValueError | None:
    """The error every frontend raises when ranks' knobs differ (None when
    they agree); ``what`` says what else they must share."""
    differ = disagreement(names, every)
    if differ is None:
        return None
    return ValueError(f"ScaleCom: ranks disagree on {differ}; every rank must build "
                      f"ScaleCom with the same arguments{what}")
