"""Loads the compressed ring allreduce engine (horovod_scalecom._ring), shared
by the PyTorch and TensorFlow frontends of path B; framework-free."""

from __future__ import annotations

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
