"""Loads the compressed ring allreduce engine (horovod_scalecom._ring), shared
by the PyTorch and TensorFlow frontends of the ScaleCom ring; framework-free."""

from __future__ import annotations

import atexit
import os
from types import ModuleType
from typing import Any, Callable


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


INDEX_SHARE_ENV = "HOROVOD_SCALECOM_INDEX_SHARE"


#: How long a rank waits at exit for its peers (see close_at_exit).
EXIT_BARRIER_S = 10.0


def close_at_exit(engine: Any, then: Callable[[float], None] | None = None) -> None:
    """At interpreter exit, before Horovod's own exit handler (registered
    earlier by hvd.init, so run later) finalizes MPI: the engine's last sends
    complete and every rank waits for the others, so that no rank leaves while
    a peer still receives from it (Open MPI 4.1's TCP transport hung or
    crashed on that). Bounded: a rank whose peers failed, or are far behind,
    leaves after EXIT_BARRIER_S seconds, when nothing of its own is in flight
    any more.

    ``then(EXIT_BARRIER_S)``, after a clean close: a barrier of Horovod's own.
    Without it the first rank out of the MPI barrier shuts Horovod down, and
    Horovod's thread on a rank still completing the barrier's last receive
    finalizes MPI under it (a crash at exit, about one run in 20).
    Horovod's collective keeps every rank until all are past their MPI calls."""
    def close() -> None:
        try:
            closed = engine.close(EXIT_BARRIER_S)
        except RuntimeError:
            return   # an exchange failed; that error was raised where it happened
        if closed and then is not None:
            then(EXIT_BARRIER_S)
    atexit.register(close)


def open_index_share(tensors: int,
                     then: Callable[[float], None] | None = None) -> Any | None:
    """The index share of ScaleCom through Horovod's allreduce, over MPI (the
    engine's share(): tagged point-to-point messages on its own communicator,
    no Horovod negotiation cycle), or None where it cannot run and Horovod's
    broadcast carries the indices: no MPI (Gloo, Elastic), MPI below
    MPI_THREAD_MULTIPLE, more tensors than MPI tags, or
    $HOROVOD_SCALECOM_INDEX_SHARE=horovod.

    Collective (MPI_Comm_dup): every rank calls it at the same point, once.
    The same conditions hold on every rank, so all take the same transport."""
    choice = os.environ.get(INDEX_SHARE_ENV, "auto").strip().lower()
    if choice not in ("auto", "mpi", "horovod"):
        raise ValueError(f"{INDEX_SHARE_ENV}={choice!r}: expected auto, mpi or horovod")
    if choice == "horovod":
        return None
    ring = load_ring()
    if not ring.mpi_ready():
        if choice == "mpi":
            raise RuntimeError(f"{INDEX_SHARE_ENV}=mpi, but MPI is not initialized with "
                               "MPI_THREAD_MULTIPLE in this process (Gloo?)")
        return None
    engine = ring.Engine()
    if tensors > engine.max_tag():      # tags 0 .. max_tag - 1; max_tag: the exit barrier
        return None
    close_at_exit(engine, then)
    return engine


def refuse_without_mpi(ours: str, instead: str, size: int, mpi_enabled: bool) -> None:
    """The ring is an MPI communicator: refused when it is built under Gloo,
    and under Elastic whatever the size now (a job started on one worker may
    grow), with the Horovod wrapper that runs ScaleCom there."""
    if os.environ.get("HOROVOD_ELASTIC") == "1" or (size > 1 and not mpi_enabled):
        raise ValueError(f"{ours} needs Horovod on MPI (its ring is an MPI communicator); this "
                         f"job runs on Gloo or under Elastic. Use {instead}(..., "
                         "compression=ScaleCom(...)) there.")
