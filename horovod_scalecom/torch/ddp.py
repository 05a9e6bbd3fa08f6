"""ScaleCom as a PyTorch DDP communication hook (no Horovod).

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

    dist.init_process_group("gloo")          # or "nccl"
    model = DDP(model)
    model.register_comm_hook(ScaleComHookState(model, ratio=0.01, beta=0.1), scalecom_hook)

For each gradient bucket DDP hands over, the hook runs ScaleCom on every
parameter in it, exactly as the exchange through Horovod's allreduce does
per tensor (the same ScaleComState, kernels and NumPy reference):

0. this rank's gradient is clipped to ``clip_factor`` times the running
   level of its norm;
1. the leader ``t mod n`` selects ``I = top-k |m + g|`` of each parameter
   (``t``: that parameter's exchanges so far);
2. one broadcast from the leader carries the indices of every parameter of
   the bucket it leads;
3. every rank gathers its ``(m + g)[I]`` and updates its memory (the
   low-pass filter);
4. one allreduce carries those k values of every parameter together with
   the parameters that go dense (warm-up, fewer than ``min_numel``
   elements); the sum is divided by n;
5. the mean is scattered back into the bucket.

Steps 0-1 run in the hook, on the thread of DDP's backward; 3-5 run in the
completion callbacks of the collectives, chained as futures, so backward
goes on while the bucket's exchange proceeds. The memory, step and clip
level are kept per parameter, by name: DDP may rebuild its buckets (after
the first iteration, under ``static_graph``) and nothing moves. Under
``no_sync()`` DDP calls no hook; the accumulated gradient is exchanged at
the next step that synchronizes, as one step.
"""

# No `from __future__ import annotations` here: DDP's register_comm_hook
# checks the hook's annotations as objects (dist.GradBucket, Future[Tensor]).
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from horovod_scalecom import bytes_model
from horovod_scalecom.config import DEFAULT_CLIP_FACTOR, ScaleComConfig
from horovod_scalecom.schedule import leader
from horovod_scalecom.torch.dist_group import DistGroup
from horovod_scalecom.torch.state import COMPRESSIBLE_DTYPES, ScaleComState, TensorState

__all__ = ["ScaleComHookState", "scalecom_hook"]


@dataclass
class _Part:
    """One parameter's place in a bucket and in the bucket's allreduce."""

    state: TensorState
    start: int                      # offset in the bucket's flat buffer
    numel: int
    step: int
    grad: Optional[torch.Tensor] = None       # float32, flat: compressed parts only
    k: int = 0                              # 0: the part goes dense
    indices: Optional[torch.Tensor] = None
    sent: int = 0                           # offset in the allreduced buffer


@dataclass
class _Share:
    """The indices of the bucket's parameters that one leader selected."""

    leader: int
    parts: list[_Part]
    indices: torch.Tensor
    future: Any = None


class ScaleComHookState:
    """ScaleCom's knobs and memory for a DDP model, and its exchange.

    Args:
        model: the model (the DDP wrapper or the module inside it); memory is
            kept per parameter name, as in the module's ``named_parameters()``.
        process_group: the group DDP reduces over (None: the default group).
        ratio: fraction of each tensor's elements sent (0.01 = 100x).
        beta: low-pass filter coefficient in (0, 1]; 1 is classic error feedback.
        warmup_steps: per parameter, the first exchanges are dense.
        min_numel: parameters with fewer elements are sent dense.
        clip_factor: each rank's gradient of a compressed parameter is clipped
            to ``clip_factor`` times the running level of its norm (None: off).
        share_timeout: seconds any of ScaleCom's collectives may take before
            it raises instead of hanging.

    Building it is collective on every rank of ``process_group``: it makes
    ScaleCom's two groups and checks that every rank has the same knobs and
    parameters (a difference raises on every rank, naming it). The same
    names and defaults as the Horovod paths (``horovod_scalecom.torch.ScaleCom``);
    the leaders are never staggered (one broadcast per bucket).
    """

    def __init__(self, model: torch.nn.Module, process_group: Any = None,
                 ratio: float = 0.01, beta: float = 0.1, warmup_steps: int = 0,
                 min_numel: int = 1024, clip_factor: Optional[float] = DEFAULT_CLIP_FACTOR,
                 share_timeout: float = 120.0) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be the torch.nn.Module DDP wraps (or the DDP "
                            f"wrapper), got {type(model).__name__}")
        config = ScaleComConfig(ratio=ratio, beta=beta, warmup_steps=warmup_steps,
                                min_numel=min_numel, clip_factor=clip_factor)
        if not share_timeout > 0:
            raise ValueError(f"share_timeout must be positive, got {share_timeout!r}")
        module = model.module if isinstance(
            model, torch.nn.parallel.DistributedDataParallel) else model
        # DDP exchanges the gradients of the parameters that require one.
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        odd = [f"{n} ({p.dtype})" for n, p in named if not p.is_floating_point()]
        if odd:
            raise TypeError(f"ScaleCom's DDP hook averages real floating-point gradients; "
                            f"these parameters are not: {', '.join(odd)}")
        self.group = DistGroup(process_group, share_timeout)
        self.state = ScaleComState(named, config, self.group, share_timeout=share_timeout)
        self._by_param = {s.param: s for s in self.state.tensors.values()}
        self._last: dict[str, dict[str, Any]] = {}
        # Set once a bucket's allreduce is issued: the next bucket's waits for it.
        self._issued: torch.futures.Future = _done(None)
        self.state.check_config()

    @property
    def config(self) -> ScaleComConfig:
        return self.state.config

    # -- the exchange of one bucket ---------------------------------------------------

    def exchange(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """The bucket's gradients averaged over the ranks, ScaleCom-compressed."""
        buffer = bucket.buffer()
        if not buffer.is_floating_point():
            raise TypeError(f"ScaleCom's DDP hook: bucket {bucket.index()} holds "
                            f"{buffer.dtype} gradients; ScaleCom averages floating-point "
                            "gradients only")
        size = self.group.size()
        parts = self._parts(bucket, buffer)
        if size == 1:
            return _done(buffer)
        shares = self._select(parts, buffer)
        issued, self._issued = self._issued, torch.futures.Future()
        result: torch.futures.Future = torch.futures.Future()
        mine = self._issued
        waits = [s.future for s in shares] + [issued]
        torch.futures.collect_all(waits).then(
            lambda done: self._reduce(done, parts, shares, buffer, mine, result))
        return result

    def _parts(self, bucket: dist.GradBucket, buffer: torch.Tensor) -> list[_Part]:
        """Each parameter of the bucket, its state and this exchange's step."""
        parts = []
        base = buffer.data_ptr()
        for param, grad in zip(bucket.parameters(), bucket.gradients()):
            state = self._by_param.get(param)
            if state is None:
                raise ValueError(
                    f"ScaleCom's DDP hook got the gradient of a parameter of shape "
                    f"{tuple(param.shape)} that its state does not know: build "
                    "ScaleComHookState from the model that DDP wraps")
            start = (grad.data_ptr() - base) // buffer.element_size()
            parts.append(_Part(state, start, grad.numel(), state.step))
            state.step += 1
        return parts

    def _select(self, parts: list[_Part], buffer: torch.Tensor) -> list[_Share]:
        """Clip, let the leaders select, and issue one index broadcast per leader."""
        size, me = self.group.size(), self.group.rank()
        by_leader: dict[int, list[_Part]] = {}
        for part in parts:
            view = buffer[part.start:part.start + part.numel]
            if self.state.goes_dense(part.step, view):
                self._record(part, None, 0.0, 0.0)
                continue
            state = part.state
            kernels = self.state.kernels(view, state.name)
            self.state.prepare(state, view)
            part.k = self.config.k(part.numel)
            grad = view if view.dtype == torch.float32 else view.float()
            start = time.perf_counter()
            norm, scale = self.state.watch.clip(state, part.step, grad)
            if scale != 1.0:
                grad.mul_(scale)      # in place: the bucket's slot is overwritten by the mean
            part.grad = grad
            lead = leader(part.step, 0, size)
            by_leader.setdefault(lead, []).append(part)
            select = time.perf_counter()
            if lead == me:
                part.indices = kernels.select_topk(state.memory, grad, part.k)
            self._record(part, lead, select - start, time.perf_counter() - select,
                         grad_norm=norm, clip_scale=scale)
        shares = []
        for lead, led in sorted(by_leader.items()):
            if lead == me:
                indices = torch.cat([p.indices for p in led])
            else:
                indices = torch.empty(sum(p.k for p in led), dtype=torch.int32,
                                      device=buffer.device)
            work = dist.broadcast(indices, src=self.group.global_rank(lead),
                                  group=self.group.index_group, async_op=True)
            shares.append(_Share(lead, led, indices, work.get_future()))
        return shares

    def _reduce(self, done: torch.futures.Future, parts: list[_Part],
                shares: list[_Share], buffer: torch.Tensor, issued: torch.futures.Future,
                result: torch.futures.Future) -> None:
        """The indices are in: update the memories, then issue the allreduce,
        after the previous bucket's (so in the same order on every rank)."""
        try:
            for waited in done.value():
                waited.value()                  # raises what a collective raised
            for share in shares:
                offset = 0
                for part in share.parts:
                    part.indices = share.indices[offset:offset + part.k]
                    offset += part.k
            send = self._gather(parts, buffer)
            work = dist.all_reduce(send, group=self.group.value_group, async_op=True)
        except BaseException as exc:  # noqa: BLE001 - handed to DDP through the future
            issued.set_result(None)
            result.set_exception(exc)
            return
        issued.set_result(None)
        work.get_future().then(lambda reduced: self._write(reduced, parts, buffer, result))

    def _gather(self, parts: list[_Part], buffer: torch.Tensor) -> torch.Tensor:
        """What this rank sends: each compressed part's k values (its memory
        updated) and each dense part's gradient, float32 (float64 stays)."""
        dtype = torch.float32 if buffer.dtype in COMPRESSIBLE_DTYPES else buffer.dtype
        send = torch.empty(sum(p.k or p.numel for p in parts), dtype=dtype,
                           device=buffer.device)
        offset = 0
        for part in parts:
            part.sent = offset
            if not part.k:
                send[offset:offset + part.numel].copy_(
                    buffer[part.start:part.start + part.numel])
                offset += part.numel
                continue
            state = part.state
            start = time.perf_counter()
            values, nonfinite = self.state.kernels(part.grad, state.name).gather_update_(
                state.memory, part.grad, part.indices, self.config.beta)
            send[offset:offset + part.k].copy_(values)
            offset += part.k
            record = self._last[state.name]
            record.update(update_s=time.perf_counter() - start, nonfinite_kept=nonfinite)
            self.state.watch.memory(state.name, part.step, nonfinite)
        return send

    def _write(self, reduced: torch.futures.Future, parts: list[_Part], buffer: torch.Tensor,
               result: torch.futures.Future) -> None:
        """The sum over the ranks, divided by n, into the bucket."""
        try:
            mean = reduced.value()[0].div_(self.group.size())
            for part in parts:
                out = buffer[part.start:part.start + part.numel]
                if not part.k:
                    out.copy_(mean[part.sent:part.sent + part.numel])
                    continue
                start = time.perf_counter()
                values = mean[part.sent:part.sent + part.k]
                self.state.watch.exchange(part.state.name, part.step, values)
                # The core's scatter, written into the bucket: no new dense tensor
                # (whose first touch of fresh pages would cost more than the copy).
                out.zero_()
                out.index_copy_(0, part.indices.long(), values.to(out.dtype))
                self._last[part.state.name]["decompress_s"] = time.perf_counter() - start
        except BaseException as exc:  # noqa: BLE001 - handed to DDP through the future
            result.set_exception(exc)
            return
        result.set_result(buffer)

    # -- checkpoints and figures ------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Memory, step counter and clip level of every parameter, for this rank
        (save one per rank); the same format as the Horovod paths'."""
        return self.state.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what state_dict() saved on this same rank of a job of the same size."""
        self.state.load_state_dict(state_dict)

    def stats(self) -> dict[str, Any]:
        """Figures of each parameter's last exchange and their totals, under the
        keys of ``ScaleCom.stats()``. Bytes follow DESIGN.md's byte model: the
        index broadcast plus a ring allreduce of k values (dense parameters:
        a ring allreduce of all their elements)."""
        tensors = {name: {**v, "nonfinite_kept": int(v["nonfinite_kept"])}
                   for name, v in list(self._last.items())}
        total = lambda key: sum(v[key] for v in tensors.values())  # noqa: E731
        sent, dense = total("bytes_sent"), total("dense_bytes")
        return {
            "bytes_sent": sent,
            "dense_bytes": dense,
            "compression": dense / sent if sent else 1.0,
            "select_s": total("select_s"),
            "update_s": total("update_s"),
            "clip_s": total("clip_s"),
            "decompress_s": total("decompress_s"),
            "nonfinite_kept": total("nonfinite_kept"),
            "clipped": sum(1 for v in tensors.values() if v["clip_scale"] < 1.0),
            "divergence": self.state.watch.stats(),
            "tensors": tensors,
        }

    def _record(self, part: _Part, lead: Optional[int], clip_s: float, select_s: float,
                grad_norm: float = 0.0, clip_scale: float = 1.0) -> None:
        size = self.group.size()
        dense = bytes_model.dense_ring_allreduce(part.numel, size)
        self._last[part.state.name] = {
            "numel": part.numel, "k": part.k or None, "leader": lead, "step": part.step,
            "bytes_sent": bytes_model.path_a(part.k, size) if part.k else dense,
            "dense_bytes": dense, "nonfinite_kept": 0, "grad_norm": grad_norm,
            "clip_scale": clip_scale, "clip_s": clip_s, "select_s": select_s,
            "update_s": 0.0, "decompress_s": 0.0,
        }


def scalecom_hook(state: ScaleComHookState,
                  bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket's gradients averaged over the ranks
    by ScaleCom (see the module's docstring). Register it with
    ``ddp_model.register_comm_hook(ScaleComHookState(ddp_model, ...), scalecom_hook)``."""
    return state.exchange(bucket)


def _done(value: Any) -> torch.futures.Future:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(value)
    return future
