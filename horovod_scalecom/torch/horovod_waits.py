"""Every wait of ScaleCom on a Horovod collective, with a deadline.

A collective that not every rank joins would otherwise hang the job; here it
raises, and the message names what was awaited and the usual causes."""

from __future__ import annotations

import time

import torch
import horovod.torch as hvd


def wait(handle: int, what: str, timeout: float) -> torch.Tensor:
    """hvd.synchronize with a deadline: a collective that not every rank joins
    raises here instead of hanging the job."""
    deadline = time.monotonic() + timeout
    pause = 1e-5
    while not hvd.poll(handle):
        if time.monotonic() > deadline:
            raise RuntimeError(timed_out(what, timeout))
        time.sleep(pause)
        pause = min(2 * pause, 1e-3)
    try:
        return hvd.synchronize(handle)
    except hvd.HorovodInternalError as exc:
        # As it is: hvd.elastic.run recovers from Horovod's own exceptions.
        if hasattr(exc, "add_note"):     # Python 3.11+
            exc.add_note(f"ScaleCom was waiting for {what}")
        raise
    except Exception as exc:
        raise RuntimeError(f"ScaleCom: waiting for {what} failed: {exc}") from exc


def timed_out(what: str, timeout: float) -> str:
    return (f"ScaleCom: rank {hvd.rank()} waited {timeout:.0f} s for {what}. "
            "Another rank did not reach this tensor: it has stopped, it called "
            "hvd.join() (which ScaleCom does not support), or, with stagger_leaders=True, "
            "the ranks handed their gradients over in different orders.")
