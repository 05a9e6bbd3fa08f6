"""One tensor at one exchange: the per-tensor step of ScaleCom that every
torch exchange of a ScaleComState takes (docs/algorithm.md, steps 0 to 6).

For a parameter's gradient at its t-th exchange:

    begin          clip_norm; the dense rule (None: the tensor goes dense, its
                   memory untouched); the memory made or moved; the gradient
                   as a flat float32 tensor, relatively clipped; k; the leader
    select         the leader's top-k of memory + gradient
      ... the exchange brings the leader's indices to every rank ...
    gather_update  the k values at the indices; the memory's low-pass update
      ... the exchange sums the values over the ranks ...
    scatter        the mean's k values into a dense gradient, zeros elsewhere

The exchanges keep only what differs: how the indices travel and how the
values are summed. The Horovod path (``torch/horovod_path.py``: MPI messages
or Horovod's broadcast, then Horovod's allreduce) and the DDP hook
(``torch/ddp_exchange.py``: one torch.distributed broadcast per leader and
bucket, then one allreduce per bucket) take every phase; the ring's host
side takes ``enter`` (``torch/ring_optimizer.py``) and ``flat32`` and
``clip_`` (``torch/ring_start.py``), and its engine does the rest in C++.
Each phase writes its figures into ``figures`` under the keys of a stats()
record (``horovod_scalecom.stats``); the exchange puts them in its record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from horovod_scalecom.schedule import leader
from horovod_scalecom.torch.state import ScaleComState, TensorState


def flat32(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as one flat contiguous float32 tensor: itself (a view) where
    it is one already, else a copy."""
    flat = tensor.detach().reshape(-1)
    return (flat if flat.dtype == torch.float32 else flat.float()).contiguous()


def clip_(scalecom: ScaleComState, state: TensorState, step: int,
          grad: torch.Tensor) -> tuple[float, float]:
    """ScaleCom's relative clip of the flat gradient ``grad``, in place:
    advances the tensor's level and returns (norm, scale). The norm is taken
    of float32 values; the scale multiplies ``grad`` in its own dtype (for a
    float32 gradient, torch's float32 product is the core's)."""
    norm, scale = scalecom.watch.clip(
        state, step, grad if grad.dtype == torch.float32 else grad.float())
    if scale != 1.0:
        grad.mul_(scale)
    return norm, scale


@dataclass
class TensorStep:
    """One compressed gradient at one exchange (made by ``begin``)."""

    scalecom: ScaleComState
    state: TensorState
    step: int                     # the tensor's exchange count (picks the leader)
    grad: torch.Tensor | None     # this rank's gradient: flat, float32, clipped
    shape: torch.Size             # the gradient's own shape and dtype
    dtype: torch.dtype
    k: int
    lead: int                     # the rank that selects
    kernels: Any                  # torch.ops.scalecom, once the device is checked
    figures: dict[str, Any]       # a stats() record's figures, as the phases take them
    indices: torch.Tensor | None = None   # int32; the exchange sets them on other ranks

    def select(self) -> torch.Tensor | None:
        """The leader's top-k of memory + gradient (exact, ties to the lower
        index); None on the other ranks, whose indices the exchange brings."""
        start = time.perf_counter()
        if self.scalecom.group.rank() == self.lead:
            self.indices = self.kernels.select_topk(self.state.memory, self.grad, self.k)
        self.figures["select_s"] = time.perf_counter() - start
        return self.indices

    def gather_update(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's k values of memory + gradient at ``indices`` (written
        into ``out`` where given), the memory updated by the low-pass filter;
        the entries that refused a non-finite update go to the guard."""
        start = time.perf_counter()
        values, nonfinite = self.kernels.gather_update_(
            self.state.memory, self.grad, self.indices, self.scalecom.config.beta)
        if out is not None:
            values = out.copy_(values)
        self.figures.update(update_s=time.perf_counter() - start, nonfinite_kept=nonfinite)
        self.scalecom.watch.memory(self.state.name, self.step, nonfinite)
        self.grad = None      # read for the last time: a float32 copy is freed here
        return values

    def scatter(self, values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The mean's k ``values`` at ``indices`` and zeros elsewhere, in the
        gradient's dtype: written into ``out`` (flat, the gradient's numel: a
        slot of the DDP bucket), or a new tensor of the gradient's shape (the
        core's scatter, as horovod_scalecom.plan times it). The values go to
        the guard first."""
        start = time.perf_counter()
        self.scalecom.watch.exchange(self.state.name, self.step, values)
        if out is None:
            numel = self.shape.numel()
            out = self.kernels.scatter(self.indices, values.to(torch.float32).contiguous(),
                                       numel).view(self.shape).to(self.dtype)
        else:
            # No new dense tensor (whose first touch of fresh pages would cost
            # more than the copy).
            out.zero_()
            out.index_copy_(0, self.indices.long(), values.to(out.dtype))
        self.figures["decompress_s"] = time.perf_counter() - start
        return out


def enter(scalecom: ScaleComState, state: TensorState, tensor: torch.Tensor, step: int) -> bool:
    """The start every exchange shares: clip_norm in place, then False where
    the tensor goes dense at ``step`` (warm-up, small, an unsupported dtype,
    or a single rank); otherwise its memory is made or moved to the
    gradient's device, and True."""
    scalecom.clip_norm_(tensor)
    if scalecom.goes_dense(step, tensor) or scalecom.group.size() == 1:
        return False
    scalecom.prepare(state, tensor)
    return True


def begin(scalecom: ScaleComState, state: TensorState, tensor: torch.Tensor, step: int,
          offset: int, flush: bool = False) -> TensorStep | None:
    """The start of ``tensor``'s exchange at ``step`` (the gradient of
    ``state``'s parameter, as this exchange hands it over): clip_norm in place,
    then None where the tensor goes dense (warm-up, small, an unsupported
    dtype, or a single rank); otherwise its memory is made or moved to the
    gradient's device and the gradient is relatively clipped (in place where
    it is float32 and contiguous). ``offset``: added to the step to pick the
    leader. ``flush``: first read the guard's GPU figures where they lag two
    steps (the Horovod path, per tensor; the DDP hook does it per bucket)."""
    if not enter(scalecom, state, tensor, step):
        return None
    if tensor.is_sparse:
        raise ValueError(f"ScaleCom: the gradient of {state.name} is sparse; "
                         "use sparse_as_dense=True in hvd.DistributedOptimizer")
    kernels = scalecom.kernels(tensor, state.name)
    if flush:
        scalecom.watch.flush_if_behind(len(scalecom.tensors))
    k = scalecom.config.k(tensor.numel())
    lead = leader(step, offset, scalecom.group.size())
    start = time.perf_counter()
    grad = flat32(tensor)
    norm, scale = clip_(scalecom, state, step, grad)
    return TensorStep(scalecom, state, step, grad, tensor.shape, tensor.dtype, k, lead, kernels,
                      {"grad_norm": norm, "clip_scale": scale,
                       "clip_s": time.perf_counter() - start})
