"""The ring engine's side of a step (the ScaleCom ring, PyTorch): each group's
gradients clipped in place and handed to the engine as host arrays or as
device pointers, with the output buffers and device scratch kept between
steps, and the step's figures. The optimizer
(``horovod_scalecom.torch.ring_optimizer``) decides when a group starts and waits
for the step; this decides what the engine reads and writes."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import horovod.torch as hvd

from horovod_scalecom import bytes_model
from horovod_scalecom.cuda import GRAD_TYPES
from horovod_scalecom.ring import device_transport
from horovod_scalecom.torch.tensor_step import clip_, flat32


def ring_device(grad: torch.Tensor, name: str) -> int | None:
    """The CUDA device a gradient goes through the ring on; None: the host."""
    if grad.device.type == "cpu":
        return None
    if grad.device.type == "cuda":
        return grad.device.index if grad.device.index is not None else 0
    raise RuntimeError(f"ScaleCom ring: the gradient of {name} is on {grad.device}; the "
                       "ring takes CPU and CUDA tensors")


class RingStart:
    """Hands groups to one ring ``engine`` for one ScaleCom ``compression``.

    ``ring``, as each start takes it: (name, parameter, TensorState, step) of
    the group's compressed tensors. Each start appends (name, parameter,
    gradient as exchanged, output) to ``started``, and returns what the
    engine reads and writes until it has waited."""

    def __init__(self, engine: Any, compression: Any) -> None:
        self.engine = engine
        self.compression = compression
        self.clip_figures: dict[str, tuple[float, float]] = {}   # name: (norm, scale), last step
        self._out_buffers: dict[str, torch.Tensor] = {}   # where the mean cannot go in place
        self._scratch_bytes: dict[int, int] = {}   # numel -> the engine's device scratch
        self._device_kernels_set = False

    def host(self, ring: list, threads: int, started: list) -> tuple:
        """CPU gradients: float32 contiguous ones receive the mean in place (the
        engine reads each element before it writes it); others go through a
        float32 copy and an output buffer kept between steps."""
        cfg = self.compression.config
        grads, outs = [], []
        for name, p, state, t in ring:
            flat = flat32(p.grad)
            in_place = p.grad.dtype == torch.float32 and p.grad.is_contiguous()
            out = flat if in_place else self._out_buffer(name, flat)
            self._clip_(name, state, t, flat)
            grads.append(flat)
            outs.append(out)
            started.append((name, p, flat, out))
        arrays = [g.numpy() for g in grads]   # an output that is its gradient: the same array
        self.engine.start([s.memory.numpy() for _, _, s, _ in ring],
                          arrays,
                          [a if o is g else o.numpy() for a, g, o in zip(arrays, grads, outs)],
                          [t for _, _, _, t in ring], float(cfg.ratio), float(cfg.beta),
                          threads)
        return grads, outs

    def device(self, ring: list, device_of: Callable[[torch.Tensor, str], int | None],
               started: list) -> tuple:
        """GPU gradients: memory, gradient and output stay on the device; the
        engine moves only the k-sized index and value sets through the host.
        ``device_of``: the optimizer's ``_ring_device``, which a test may
        replace to run this branch on host tensors."""
        cfg = self.compression.config
        if not self._device_kernels_set:
            name, p = ring[0][0], ring[0][1]
            self.engine.use_device_kernels(
                self.compression.state.kernel_table(p.grad, name),
                device_transport())
            self._device_kernels_set = True
        grads, scratch, specs = [], [], []
        for name, p, state, t in ring:
            grad = p.grad.detach().reshape(-1).contiguous()
            self._clip_(name, state, t, grad)
            # Never in place: the device side scatters the mean before it reads the gradient.
            out = self._out_buffer(name, grad)
            work = self._scratch(grad, float(cfg.ratio))
            specs.append((state.memory.data_ptr(), grad.data_ptr(),
                          GRAD_TYPES[str(grad.dtype).removeprefix("torch.")], out.data_ptr(),
                          grad.numel(), t, device_of(grad, name), work.data_ptr(),
                          work.numel()))
            grads.append(grad)
            scratch.append(work)
            started.append((name, p, grad, out))
        # The engine works on its own thread and stream: the group's gradients
        # must be complete (one wait per group, during backward).
        if grads[0].is_cuda:
            torch.cuda.current_stream(grads[0].device).synchronize()
        self.engine.start_device(specs, float(cfg.ratio), float(cfg.beta))
        return grads, scratch

    def figures(self, started: list, dense_tensors: int, on_gpu: bool | None, python_s: float,
                ring_bytes: int, timings: dict, waits: dict) -> dict[str, Any]:
        """The optimizer's stats() of a step: ``started`` as the starts made
        it, ``python_s`` spent starting groups, ``waits`` the parts of
        synchronize()."""
        size = hvd.size()
        busy = timings.get("busy_s", 0.0)
        return {
            "ring_tensors": len(started),
            "ring_groups": timings.get("exchanges", 0),
            "ring_bytes": ring_bytes,
            "ring_dense_bytes": sum(bytes_model.dense_ring_allreduce(p.numel(), size)
                                    for _, p, _, _ in started),
            "dense_tensors": dense_tensors,
            "nonfinite_kept": self.engine.last_nonfinite() if started else 0,
            # Tensors whose gradient ScaleCom's relative clip scaled down this step.
            "clipped": sum(1 for name, *_ in started if self.clip_figures[name][1] < 1.0),
            # Selection, reduction, dense output and memory update inside the ring
            # (its work outside MPI).
            "compress_s": self.engine.last_compute_s() if started else 0.0,
            # What MPI read and wrote: host tensors, or GPU tensors' messages.
            "ring_transport": ("" if not started else "host" if not on_gpu else
                               "cuda-aware MPI" if self.engine.cuda_aware() else
                               "pinned host staging"),
            # Time inside synchronize(), what step() adds to backward.
            "exchange_s": waits["synchronize_s"],
            # Where the step's time went: the engine's phases (summed over the
            # groups), Python starting groups from backward's hooks, and the
            # parts of synchronize(). hidden_s: the ring's busy time that
            # synchronize() did not wait for, i.e. overlapped with backward.
            "breakdown": {**{k: v for k, v in timings.items() if k != "exchanges"},
                          "python_start_s": python_s, **waits,
                          "hidden_s": max(0.0, busy - waits["ring_wait_s"])},
        }

    def _scratch(self, grad: torch.Tensor, ratio: float) -> torch.Tensor:
        if grad.numel() not in self._scratch_bytes:    # the same every step: ask once
            with torch.cuda.device(grad.device) if grad.is_cuda else contextlib.nullcontext():
                # The workspace queries run on the current device: make it the gradient's.
                self._scratch_bytes[grad.numel()] = self.engine.device_scratch_bytes(
                    grad.numel(), ratio)
        return torch.empty(self._scratch_bytes[grad.numel()], dtype=torch.uint8,
                           device=grad.device)

    def _out_buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        out = self._out_buffers.get(name)
        if out is None or out.numel() != like.numel() or out.device != like.device:
            out = self._out_buffers[name] = torch.empty(like.numel(), dtype=torch.float32,
                                                        device=like.device)
        return out

    def _clip_(self, name: str, state, step: int, grad: torch.Tensor) -> None:
        """ScaleCom's relative clip (tensor_step.clip_), in place: the ring
        hands the mean back in the gradient's storage anyway. A
        float16/bfloat16 GPU gradient is scaled in its own dtype (the
        reference scales the float32 value)."""
        self.clip_figures[name] = clip_(self.compression.state, state, step, grad)
