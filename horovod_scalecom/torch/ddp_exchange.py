"""The exchange of one DDP bucket by ScaleCom (horovod_scalecom.torch.ddp).

On the hook's thread (DDP's backward), in bucket order on every rank:
clip, the leader's selection, one index broadcast per leader. In the
broadcasts' completion callbacks: the memory update and the allreduce of
the k values and the dense parameters. The allreduces must be issued in
the same order on every rank, but the callbacks run in the order the
broadcasts complete, which differs between ranks: a bucket whose indices
are in waits in a queue, and whichever thread finds the queue's head ready
issues it and every ready bucket behind it, in a loop (never one callback
inside another, however many buckets pile up). A rank whose own part
failed still sends (zeros and a flag) so that every rank's collectives stay
paired, and every rank raises. In the allreduce's callback: the mean into
the bucket, and the bucket's future completes. Each parameter's clip,
selection, update and scatter are the per-tensor step of every exchange
(``horovod_scalecom.torch.tensor_step``); this module keeps how the indices
travel and how the values are summed.

CUDA tensors: futures are waited on (``wait()``, which makes the current
stream wait for the collective) on the thread that then uses the tensors,
and the bucket's future carries the device, so that DDP's wait orders the
copy-out after the writes.
"""

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from horovod_scalecom.torch.ddp_group import DistGroup
from horovod_scalecom.torch.state import COMPRESSIBLE_DTYPES, ScaleComState, TensorState
from horovod_scalecom.torch.tensor_step import TensorStep, begin


@dataclass
class Part:
    """One parameter's place in a bucket and in the bucket's allreduce."""

    state: TensorState
    start: int                      # offset in the bucket's flat buffer
    numel: int
    step: int
    compressed: Optional[TensorStep] = None   # None: the part goes dense
    sent: int = 0                             # offset in the allreduced buffer

    @property
    def k(self) -> int:
        """The values it sends; 0: it goes dense."""
        return self.compressed.k if self.compressed is not None else 0


@dataclass
class Share:
    """The indices of the bucket's parameters that one leader selected."""

    parts: list
    indices: torch.Tensor
    future: Any


@dataclass
class Bucket:
    index: int
    buffer: torch.Tensor
    parts: list
    shares: list
    result: torch.futures.Future
    ready: bool = False


def future_on(device: torch.device) -> torch.futures.Future:
    """A future that DDP's wait synchronises with, for tensors on ``device``."""
    if device.type == "cuda":
        return torch.futures.Future(devices=[device])
    return torch.futures.Future()


class BucketExchange:
    """Runs the buckets of one ScaleComHookState; ``record(part, **figures)``
    receives each part's timings and counts."""

    def __init__(self, state: ScaleComState, group: DistGroup,
                 record: Callable[..., None]) -> None:
        self.state = state
        self.group = group
        self.record = record
        self._queue: deque = deque()     # buckets whose allreduce is not issued yet
        self._lock = threading.Lock()
        self._pumping = False

    def start(self, index: int, buffer: torch.Tensor, parts: list) -> torch.futures.Future:
        """On the hook's thread: select, issue the broadcasts, queue the bucket."""
        self.state.watch.flush_if_behind(len(self.state.tensors))
        bucket = Bucket(index, buffer, parts, self._select(parts, buffer),
                        future_on(buffer.device))
        with self._lock:
            self._queue.append(bucket)
        torch.futures.collect_all([s.future for s in bucket.shares]).then(
            lambda _: self._ready(bucket))
        return bucket.result

    def _select(self, parts: list, buffer: torch.Tensor) -> list:
        """Clip, let the leaders select, and issue one index broadcast per leader."""
        me = self.group.rank()
        by_leader: dict = {}
        for part in parts:
            # In place: the bucket's slot is overwritten by the mean.
            step = begin(self.state, part.state, buffer[part.start:part.start + part.numel],
                         part.step, 0)
            if step is None:
                self.record(part, None)
                continue
            part.compressed = step
            by_leader.setdefault(step.lead, []).append(part)
            step.select()
            self.record(part, step.lead, **step.figures)
        shares = []
        for lead, led in sorted(by_leader.items()):
            if lead == me:
                indices = torch.cat([p.compressed.indices for p in led])
            else:
                indices = torch.empty(sum(p.k for p in led), dtype=torch.int32,
                                      device=buffer.device)
            work = dist.broadcast(indices, src=self.group.global_rank(lead),
                                  group=self.group.index_group, async_op=True)
            shares.append(Share(led, indices, work.get_future()))
        return shares

    # -- the queue: allreduces in bucket order ---------------------------------------

    def _ready(self, bucket: Bucket) -> None:
        with self._lock:
            bucket.ready = True
        self._pump()

    def _pump(self) -> None:
        """Issue the allreduce of every ready bucket at the queue's head, in order."""
        while True:
            with self._lock:
                if self._pumping or not self._queue or not self._queue[0].ready:
                    return
                bucket = self._queue.popleft()
                self._pumping = True
            try:
                self._issue(bucket)
            finally:
                with self._lock:
                    self._pumping = False

    def _issue(self, bucket: Bucket) -> None:
        error: Optional[BaseException] = None
        try:
            for share in bucket.shares:
                share.future.wait()            # raises what the broadcast raised
                offset = 0
                for part in share.parts:
                    part.compressed.indices = share.indices[offset:offset + part.k]
                    offset += part.k
            send = self._gather(bucket)
        except BaseException as exc:  # noqa: BLE001 - handed to DDP through the future
            error = exc
            send = self._send_buffer(bucket)
            send.zero_()
            send[-1] = 1.0                     # tells every rank that this one failed
        try:
            work = dist.all_reduce(send, group=self.group.value_group, async_op=True)
        except BaseException as exc:  # noqa: BLE001
            bucket.result.set_exception(error or exc)
            return
        work.get_future().then(lambda reduced: self._write(bucket, reduced, error))

    def _send_buffer(self, bucket: Bucket) -> torch.Tensor:
        """k values per compressed part, every element of a dense one, and a
        failure flag; float32 (float64 stays)."""
        buffer = bucket.buffer
        dtype = torch.float32 if buffer.dtype in COMPRESSIBLE_DTYPES else buffer.dtype
        length = sum(p.k or p.numel for p in bucket.parts) + 1
        return torch.empty(length, dtype=dtype, device=buffer.device)

    def _gather(self, bucket: Bucket) -> torch.Tensor:
        """What this rank sends: each compressed part's k values (its memory
        updated) and each dense part's gradient."""
        send = self._send_buffer(bucket)
        offset = 0
        for part in bucket.parts:
            part.sent = offset
            if not part.k:
                send[offset:offset + part.numel].copy_(
                    bucket.buffer[part.start:part.start + part.numel])
                offset += part.numel
                continue
            part.compressed.gather_update(send[offset:offset + part.k])
            offset += part.k
            self.record(part, **part.compressed.figures)
        send[-1] = 0.0
        return send

    def _write(self, bucket: Bucket, reduced: torch.futures.Future,
               error: Optional[BaseException]) -> None:
        """The sum over the ranks, divided by n, into the bucket."""
        try:
            total = reduced.wait()[0]
            if error is not None:
                raise error
            failed = int(total[-1].item())
            if failed:
                raise RuntimeError(
                    f"ScaleCom's DDP hook: {failed} rank(s) failed in the exchange of bucket "
                    f"{bucket.index}; that rank's own error says why. This bucket's "
                    "gradients are not averaged.")
            mean = total[:-1].div_(self.group.size())
            for part in bucket.parts:
                self._write_part(bucket.buffer, part, mean)
        except BaseException as exc:  # noqa: BLE001 - handed to DDP through the future
            bucket.result.set_exception(exc)
            return
        bucket.result.set_result(bucket.buffer)

    def _write_part(self, buffer: torch.Tensor, part: Part, mean: torch.Tensor) -> None:
        out = buffer[part.start:part.start + part.numel]
        if not part.k:
            out.copy_(mean[part.sent:part.sent + part.numel])
            return
        part.compressed.scatter(mean[part.sent:part.sent + part.k], out)
        self.record(part, **part.compressed.figures)
