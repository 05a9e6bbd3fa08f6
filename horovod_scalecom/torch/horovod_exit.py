"""The last step of ScaleCom's exit in a torch job: a barrier of Horovod's own
(horovod_scalecom.ring.close_at_exit says why)."""

import time

import torch
import horovod.torch as hvd

_count = 0


def horovod_barrier(timeout_s: float) -> None:
    """Every rank reaches this point, or `timeout_s` passes; never raises (it
    runs at interpreter exit, when a peer may already be gone)."""
    global _count
    _count += 1
    try:
        handle = hvd.allreduce_async(torch.zeros(1), name=f"scalecom.exit.{_count}", op=hvd.Sum)
        deadline = time.monotonic() + timeout_s
        while not hvd.poll(handle):
            if time.monotonic() > deadline:
                return
            time.sleep(1e-3)
        hvd.synchronize(handle)
    except Exception:   # noqa: BLE001 - Horovod already shut down, or a peer failed
        pass
