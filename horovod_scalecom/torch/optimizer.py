"""Path B for PyTorch: a Horovod-style DistributedOptimizer whose compressed
gradients go through ScaleCom's ring allreduce over MPI.

    optimizer = horovod_scalecom.torch.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(),
        compression=ScaleCom(model, ratio=0.01, beta=0.1))

At ``step()`` (or ``synchronize()``) every compressible gradient of the step
travels in one fused compressed ring (``horovod_scalecom._ring``: chunk-wise
cyclic owners, (index, value) pairs in the reduce-scatter, values in the
allgather, so per-rank traffic does not grow with n). The ring runs on its
own thread and MPI communicator while the other gradients (warm-up steps,
tensors below ``min_numel``, non-floating) go through Horovod's allreduce,
overlapping the two. ScaleCom's memory and step counters are the ones of the
``compression`` object, so its state_dict()/load_state_dict() checkpoint
path B too. CUDA gradients keep their memory on the GPU: the engine selects
and updates with the CUDA kernels and moves only the k-sized index and value
sets through host memory (any MPI; no CUDA-aware MPI needed or used).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable

import torch
import horovod.torch as hvd

from horovod_scalecom import bytes_model
from horovod_scalecom.cuda import GRAD_TYPES
from horovod_scalecom.ring import device_transport, load_ring
from horovod_scalecom.torch.compression import ScaleCom



class _RingOptimizer(torch.optim.Optimizer):
    """Mixed into the wrapped optimizer's class, as Horovod does."""

    def __init__(self, params, named_parameters, compression: ScaleCom,
                 backward_passes_per_step: int, op) -> None:
        super(self.__class__, self).__init__(params)
        if not isinstance(compression, ScaleCom):
            raise TypeError("horovod_scalecom.torch.DistributedOptimizer needs compression="
                            "ScaleCom(...); for other compressors use hvd.DistributedOptimizer")
        if op != hvd.Average:
            raise ValueError("the ScaleCom ring averages; op must be hvd.Average")
        if backward_passes_per_step < 1:
            raise ValueError("backward_passes_per_step must be >= 1")
        self._compression = compression
        self.backward_passes_per_step = backward_passes_per_step
        named = list(named_parameters) if named_parameters is not None else [
            (name, p) for name, p in compression._named()]
        by_id = {id(p): name for name, p in named}
        self._params: list[tuple[str, torch.Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    if id(p) not in by_id:
                        raise ValueError("an optimizer parameter is not in named_parameters")
                    self._params.append((by_id[id(p)], p))
        unknown = [n for n, _ in self._params if n not in compression._states]
        if unknown:
            raise ValueError(f"ScaleCom was not given these parameters: {', '.join(unknown)}")
        # Registration order, the same on every rank: the ring's tensor order.
        order = {name: i for i, name in enumerate(compression._states)}
        self._params.sort(key=lambda item: order[item[0]])
        if hvd.size() > 1:
            self._engine = load_ring().Engine()
        else:
            self._engine = None
        self._last: dict[str, Any] = {}
        self._device_kernels_set = False
        self._scratch_bytes: dict[int, int] = {}   # numel -> the engine's device scratch
        self._in_flight: tuple | None = None
        self._leaked: list[tuple] = []

    def synchronize(self) -> None:
        compression = self._compression
        compression._check_config()
        ring, dense = [], []
        for name, p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)   # another rank may have a gradient for it
            if p.grad.is_sparse:
                raise ValueError(f"ScaleCom: the gradient of {name} is sparse; the ring "
                                 "exchanges dense gradients (use a dense embedding, sparse=False)")
            state = compression._states[name]
            t = state.step
            state.step += 1
            grad = p.grad
            if self._engine is None or compression._goes_dense(t, grad):
                dense.append((name, p))
            else:
                compression._prepare(state, grad)
                ring.append((name, p, state, t))
        on_gpu = {self._ring_device(p.grad, name) is not None for name, p, _, _ in ring}
        if len(on_gpu) > 1:
            raise RuntimeError("ScaleCom ring: some compressed gradients are on a GPU and some "
                               "on the CPU; the ring exchanges one kind per step")

        start = time.perf_counter()
        outs = []
        if ring:
            # Held until the exchange ends; for ever if it times out (the engine's
            # thread may still write into them).
            self._in_flight = (self._start_device if on_gpu == {True} else self._start_host)(ring)
            outs = self._in_flight[0]
        handles = []
        for name, p in dense:
            grad = p.grad if p.grad.dtype != torch.bfloat16 else p.grad.float()
            handles.append((p, grad, hvd.allreduce_async_(grad, name=f"scalecom.dense.{name}",
                                                          op=hvd.Average)))
        ring_bytes = 0
        if ring:
            try:
                ring_bytes = self._engine.wait(compression.share_timeout)
            except TimeoutError as exc:
                self._leaked.append(self._in_flight)
                raise RuntimeError(f"ScaleCom ring on rank {hvd.rank()}: {exc}") from exc
            self._in_flight = None
            for (_, p, _, _), out in zip(ring, outs):
                p.grad.copy_(out.view_as(p.grad))
        for p, grad, handle in handles:
            result = hvd.synchronize(handle)
            if result is not p.grad:
                p.grad.copy_(result)
        size = hvd.size()
        self._last = {
            "ring_tensors": len(ring),
            "ring_bytes": ring_bytes,
            "ring_dense_bytes": sum(bytes_model.dense_ring_allreduce(p.numel(), size)
                                    for _, p, _, _ in ring),
            "dense_tensors": len(dense),
            "nonfinite_kept": self._engine.last_nonfinite() if ring else 0,
            # Selection, dense output and memory update inside the ring (its work outside MPI).
            "compress_s": self._engine.last_compute_s() if ring else 0.0,
            # What MPI read and wrote: host tensors, or GPU tensors' messages.
            "ring_transport": ("" if not ring else "host" if on_gpu != {True} else
                               "cuda-aware MPI" if self._engine.cuda_aware() else
                               "pinned host staging"),
            "exchange_s": time.perf_counter() - start,
        }

    def _start_host(self, ring) -> tuple:
        cfg = self._compression.config
        grads = [p.grad.detach().reshape(-1).to(torch.float32).contiguous()
                 for _, p, _, _ in ring]
        outs = [torch.empty_like(g) for g in grads]
        self._engine.start([s.memory.numpy() for _, _, s, _ in ring],
                           [g.numpy() for g in grads], [o.numpy() for o in outs],
                           [t for _, _, _, t in ring], float(cfg.ratio), float(cfg.beta),
                           torch.get_num_threads())
        return outs, grads

    def _start_device(self, ring) -> tuple:
        """GPU gradients: memory, gradient and output stay on the device; the
        engine moves only the k-sized index and value sets through the host."""
        compression = self._compression
        cfg = compression.config
        if not self._device_kernels_set:
            name, p = ring[0][0], ring[0][1]
            self._engine.use_device_kernels(
                compression._kernels(p.grad, name).kernels.addresses(), device_transport())
            self._device_kernels_set = True
        grads, outs, scratch, specs = [], [], [], []
        for name, p, state, t in ring:
            grad = p.grad.detach().reshape(-1).contiguous()
            out = torch.empty(grad.numel(), dtype=torch.float32, device=grad.device)
            if grad.numel() not in self._scratch_bytes:    # the same every step: ask once
                with torch.cuda.device(grad.device) if grad.is_cuda else contextlib.nullcontext():
                    # The workspace queries run on the current device: make it the gradient's.
                    self._scratch_bytes[grad.numel()] = self._engine.device_scratch_bytes(
                        grad.numel(), float(cfg.ratio))
            work = torch.empty(self._scratch_bytes[grad.numel()], dtype=torch.uint8,
                               device=grad.device)
            specs.append((state.memory.data_ptr(), grad.data_ptr(),
                          GRAD_TYPES[str(grad.dtype).removeprefix("torch.")], out.data_ptr(),
                          grad.numel(), t, self._ring_device(grad, name), work.data_ptr(),
                          work.numel()))
            grads.append(grad)
            outs.append(out)
            scratch.append(work)
        # The engine works on its own thread and stream: the gradients must be complete.
        if grads[0].is_cuda:
            torch.cuda.current_stream(grads[0].device).synchronize()
        self._engine.start_device(specs, float(cfg.ratio), float(cfg.beta))
        return outs, grads, scratch

    @staticmethod
    def _ring_device(grad: torch.Tensor, name: str) -> int | None:
        """The CUDA device a gradient goes through the ring on; None: the host."""
        if grad.device.type == "cpu":
            return None
        if grad.device.type == "cuda":
            return grad.device.index if grad.device.index is not None else 0
        raise RuntimeError(f"ScaleCom ring: the gradient of {name} is on {grad.device}; the "
                           "ring takes CPU and CUDA tensors")

    def stats(self) -> dict[str, Any]:
        """Figures of the last step: bytes this rank sent in the ring (counted
        by the engine), what a dense allreduce of the same tensors would send,
        and the exchange time."""
        return dict(self._last)

    def step(self, closure=None):
        self.synchronize()
        return super(self.__class__, self).step(closure)


def DistributedOptimizer(optimizer: torch.optim.Optimizer,
                         named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                         compression: ScaleCom | None = None,
                         backward_passes_per_step: int = 1, op=hvd.Average,
                         **horovod_kwargs: Any) -> torch.optim.Optimizer:
    """Wraps ``optimizer`` like ``hvd.DistributedOptimizer``, with path B.

    Takes hvd.DistributedOptimizer's arguments. ``compression`` must be a
    ScaleCom built from the same parameters. Gradients are exchanged in
    ``step()``/``synchronize()``, after the whole backward pass (the ring
    fuses all tensors of a step into one message per hop), so gradients
    accumulate locally over ``backward_passes_per_step`` backward passes.
    ``num_groups``/``groups`` have no effect (the ring already fuses
    everything); other Horovod options are not supported and rejected.
    """
    if compression is None:
        raise TypeError("compression=ScaleCom(...) is required")
    for key, value in horovod_kwargs.items():
        if key in ("num_groups", "groups", "sparse_as_dense"):
            continue
        if key == "gradient_predivide_factor" and value == 1.0:
            continue
        raise ValueError(f"horovod_scalecom.torch.DistributedOptimizer does not support "
                         f"{key}={value!r}")
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_RingOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression,
               backward_passes_per_step, op)
