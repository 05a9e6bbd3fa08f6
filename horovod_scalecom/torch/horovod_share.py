"""The leader's indices through Horovod's broadcast (Gloo, Elastic, process
sets, MPI without thread support), in any hand-over order.

Horovod matches collectives by name, but only among the ones a rank has
posted. A rank that waits inside ``compress`` for the indices of tensor X
posts nothing else until they come; with three ranks or more, rank 1 may wait
for X while rank 2 waits for Y, and X's broadcast needs rank 2 (and Y's rank
1): neither finishes. So before a rank first waits at step t, it posts its
side of the broadcast of every tensor the optimizer will hand over at step t
(Horovod's force-allreduce hands over every one of them, gradient or not),
each into a buffer of its own. Each wait is then for the leader alone, and
the leader never waits inside ``compress`` (its own broadcast is awaited in
``decompress``, after every rank has handed over every tensor). With
``stagger_leaders=True`` the leaders differ per tensor and two leaders may
still wait for each other: that schedule needs one hand-over order.

Which tensors come at step t is read from the Horovod optimizer that calls
``compress`` (``horovod_internals.requires_update``, the set its ``synchronize()``
completes); where the caller is not an optimizer, each rank posts as it
arrives, which is enough for two ranks and for one hand-over order.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any, Callable

import torch
import horovod.torch as hvd

from horovod_scalecom.horovod_internals import follows_updates, require, requires_update
from horovod_scalecom.torch.horovod_waits import wait

# The Horovod path (torch/horovod_path.py, which imports this) reads Horovod's
# frames and its optimizer's _requires_update.
require("torch")


class BroadcastShare:
    """One ScaleCom's index shares over Horovod's broadcast, on its process set.

    ``expected(t, coming)`` is supplied by the compressor: the (name,
    parameter, k, leader) of every tensor in ``coming`` (the optimizer's
    parameters) that it will compress at step t and this rank does not lead."""

    def __init__(self, process_set: Any, timeout: float) -> None:
        self.process_set = process_set
        self.timeout = timeout
        self._posted: dict[str, tuple[int, torch.Tensor]] = {}   # name -> (handle, buffer)
        self._ahead_of: int | None = None       # the step whose receives are posted
        self._optimizer: Callable[[], Any] | None = None
        self._led: deque[int] = deque(maxlen=8)   # the last steps this rank led

    def follow(self, optimizer: Any) -> None:
        """The Horovod optimizer whose hand-overs this share foresees."""
        if optimizer is not None and follows_updates(optimizer):
            self._optimizer = weakref.ref(optimizer)

    def reset(self) -> None:
        """Forget posted receives and led steps: Horovod was reset (Elastic,
        which ends its pending collectives) or the steps were reloaded."""
        self._posted.clear()
        self._ahead_of = None
        self._led.clear()

    def forget(self, name: str) -> None:
        """A tensor that will not come through ScaleCom at its posted step: its
        receive (closed by the leader's zeros) must not serve a later step."""
        self._posted.pop(name, None)

    def lead(self, indices: torch.Tensor, lead: int, name: str, step: int) -> int:
        """The leader's broadcast of its indices; awaited in ``decompress``."""
        if not self._led or self._led[-1] != step:
            self._led.append(step)
        return self.post(indices, lead, name)

    def coming(self) -> Any:
        """The parameters the followed optimizer hands over at this step (its
        ``_requires_update``); None where no optimizer is followed."""
        optimizer = self._optimizer() if self._optimizer is not None else None
        return None if optimizer is None else requires_update(optimizer)

    def complete(self, name: str, param: torch.Tensor, k: int, lead: int, step: int) -> None:
        """A tensor the other ranks posted a receive for at ``step`` (by the
        compressor's rule) turned out never to come through ScaleCom (a sparse
        gradient that Horovod gathers): its leader sends k zeros, so that no
        receive stays open. The receives were posted exactly where this rank
        led a tensor at that step."""
        if self.process_set.rank() != lead or step not in self._led:
            return
        self.post(torch.zeros(k, dtype=torch.int32, device=param.device), lead, name)

    def post(self, indices: torch.Tensor, lead: int, name: str) -> int:
        ranks = self.process_set.ranks
        root = ranks[lead] if self.process_set.process_set_id != 0 else lead
        return hvd.broadcast_async_(indices, root_rank=root, name=f"scalecom.indices.{name}",
                                    process_set=self.process_set)

    def receive(self, indices: torch.Tensor, lead: int, name: str, step: int,
                expected: Callable[[int, Any], list[tuple[str, torch.Tensor, int, int]]]
                ) -> None:
        """A non-leader's receive of ``name``'s indices at ``step``, into ``indices``."""
        if self._ahead_of != step:
            self._ahead_of = step
            self._post_ahead(step, expected)
        posted = self._posted.pop(name, None)
        if posted is None:     # not foreseen: a tensor outside the optimizer's set
            posted = (self.post(indices, lead, name), indices)
        handle, buffer = posted
        wait(handle, f"the indices of {name} from leader rank {lead}", self.timeout)
        if buffer is not indices:
            indices.copy_(buffer)

    def _post_ahead(self, step: int, expected) -> None:
        coming = self.coming()
        if coming is None:
            return
        for name, param, k, lead in expected(step, coming):
            if name not in self._posted:
                buffer = torch.empty(k, dtype=torch.int32, device=param.device)
                self._posted[name] = (self.post(buffer, lead, name), buffer)
