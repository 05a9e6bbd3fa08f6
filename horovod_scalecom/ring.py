"""Loads the compressed ring allreduce engine (horovod_scalecom._ring), shared
by the PyTorch and TensorFlow frontends of path B; framework-free."""

from __future__ import annotations

import os
from types import ModuleType


def load_ring() -> ModuleType:
    """The C++ engine, or an ImportError that says how to build it."""
    try:
        from horovod_scalecom import _ring
    except ImportError as exc:
        raise ImportError(
            f"horovod_scalecom's ring allreduce extension (horovod_scalecom._ring) could not be "
            f"loaded: {exc}. It is built with Open MPI's mpicxx: install Open MPI and run "
            "`bash scripts/setup.sh` (or `pip install --no-build-isolation -e .`).") from exc
    return _ring


TRANSPORT_ENV = "HOROVOD_SCALECOM_CUDA_AWARE_MPI"
_TRANSPORTS = {"": "auto", "auto": "auto", "0": "staged", "1": "cuda-aware"}


def device_transport() -> str:
    """How the ring hands GPU tensors' messages to MPI, from
    $HOROVOD_SCALECOM_CUDA_AWARE_MPI: unset or ``auto`` asks the MPI library
    whether it reads device memory; ``0`` stages every hop's message through
    pinned host memory; ``1`` hands MPI the device buffers (for a CUDA-aware
    MPI that does not say so, such as some MVAPICH2 builds)."""
    value = os.environ.get(TRANSPORT_ENV, "").strip().lower()
    if value not in _TRANSPORTS:
        raise ValueError(f"{TRANSPORT_ENV}={value!r}: expected auto, 0 or 1")
    return _TRANSPORTS[value]
