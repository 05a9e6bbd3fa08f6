"""ScaleCom as a Horovod Compressor for PyTorch (path A of DESIGN.md).

For each gradient tensor, at its t-th allreduce:

0. ``g`` is clipped to ``clip_factor`` times the running level of its norm
   (this rank's, this tensor's: ``horovod_scalecom.reference.clip``)
1. ``p = m + g``                      (float32 memory m, zero at start)
2. the leader ``t mod n`` selects ``I = top-k |p|`` (exact, ties to
   the lower index), ``k = max(1, ceil(ratio * numel))``
3. ``I`` is broadcast from the leader to every rank
4. every rank gathers ``c = p[I]`` and updates its memory with the low-pass
   filter: ``m_j += beta g_j`` off ``I``, ``m_j *= (1 - beta)`` on ``I``
5. Horovod allreduces the k values (its own MPI/Gloo path, tensor fusion)
6. ``decompress`` scatters the mean back into a dense gradient.

Steps 1-4 run in ``compress`` inside Horovod's gradient hook; 2 and 4 are
the C++ core (``torch.ops.scalecom``), one fused pass over m and g on
non-leaders. For CUDA gradients they are the CUDA kernels
(``horovod_scalecom.cuda``) on the current stream, and the memory lives on
the gradient's GPU.

The index share travels over MPI, on a communicator of ScaleCom's own
(``horovod_scalecom.ring.open_index_share``): the leader sends its indices
to each rank, tagged with the tensor's registration index, so a rank gets
the indices of the tensor it is at whatever order the other ranks reach
their tensors in, for one message latency and no Horovod negotiation cycle.
Where MPI cannot carry it (Gloo, Elastic, process sets, MPI without thread
support) it is Horovod's broadcast, one negotiation cycle per tensor, issued
from the caller's thread and never from Horovod's background thread, with
the receives of a step posted ahead so that any hand-over order works
(``horovod_scalecom.torch.broadcast_share``). The choice is made once, alike
on every rank; ``$HOROVOD_SCALECOM_INDEX_SHARE=horovod`` forces the broadcast.

A tensor is identified by the parameter whose ``.grad`` it is, and so by
that parameter's name (never by call order): it works with
``zero_grad(set_to_none=True)``, ``backward_passes_per_step > 1``,
``groups``, and with ``sparse_as_dense`` (whose densified copy is traced back
to its parameter through Horovod's call, ``horovod_scalecom.horovod_call``).

Ranks may hand their gradients over in different orders, and a parameter
without a gradient on some rank is sent as zeros by Horovod's
``synchronize()`` on that rank: every tensor of a step has the same leader,
and a leader never waits inside ``compress`` (its sends are non-blocking), so
the ranks that wait for it always get their indices (through Horovod's
broadcast, because each posts all of the step's receives before its first
wait). (Leaders staggered per
tensor, ``stagger_leaders=True``, need one hand-over order on every rank; two
ranks could otherwise wait for each other.) A share that does not arrive
within ``share_timeout`` seconds raises instead of hanging.
"""

from __future__ import annotations

import math
import os
import time
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import torch
import horovod.torch as hvd
from horovod.torch.compression import Compressor

from horovod_scalecom import bytes_model
from horovod_scalecom.config import (
    DEFAULT_CLIP_FACTOR, ScaleComConfig, check_numel, disagreement)
from horovod_scalecom.horovod_call import (
    HorovodCall, check_call, describe_process_set, horovod_call, unheld_error)
from horovod_scalecom.ring import open_index_share
from horovod_scalecom.schedule import leader
from horovod_scalecom.torch._cuda import CudaOps
from horovod_scalecom.torch._exit import horovod_barrier
from horovod_scalecom.torch._ops import ops
from horovod_scalecom.torch.broadcast_share import BroadcastShare, timed_out, wait
from horovod_scalecom.torch.watch import Watch

COMPRESSIBLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STATE_VERSION = 2     # 2: the clip levels

NamedParameters = Union[torch.nn.Module, Iterable[tuple[str, torch.Tensor]]]


@dataclass
class _TensorState:
    """Everything ScaleCom keeps for one parameter's gradient."""

    name: str
    param: torch.Tensor
    offset: int                   # registration index: staggers the leaders
    memory: torch.Tensor | None = None
    step: int = 0                 # compress calls so far, warm-up included
    checked: bool = False         # numel and Horovod's call checked (once)
    index: int = 0                # registration index: the index share's MPI tag
    level: float = math.nan       # the relative clip's running norm level (NaN: not yet)
    bypassed: bool = False        # sparse, gathered by Horovod without ScaleCom


@dataclass
class _Ctx:
    state: _TensorState
    indices: torch.Tensor | None  # None: the tensor went dense
    shape: torch.Size
    dtype: torch.dtype
    share: int | None = None      # the leader's own Horovod broadcast, awaited in decompress


def _named_list(named_parameters: NamedParameters) -> list[tuple[str, torch.Tensor]]:
    if isinstance(named_parameters, torch.nn.Module):
        return list(named_parameters.named_parameters())
    if iter(named_parameters) is named_parameters:
        raise TypeError(
            "ScaleCom got a one-shot iterator (such as model.named_parameters()). If the same "
            "iterator is also handed to hvd.DistributedOptimizer, one of them sees it empty. "
            "Pass the model itself, ScaleCom(model, ...), or list(model.named_parameters()).")
    pairs = list(named_parameters)
    if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
               and isinstance(p[1], torch.Tensor) for p in pairs):
        raise TypeError("named_parameters must hold (name, parameter) pairs, as produced by "
                        "model.named_parameters()")
    return pairs


class ScaleCom(Compressor):
    """ScaleCom compressor: CLT-k with a cyclic leader and a low-pass memory.

    Args:
        named_parameters: the model, or a list of (name, parameter) pairs; the
            gradients of these parameters are compressed, keyed by name.
        ratio: fraction of each tensor's elements sent (0.01 = 100x).
        beta: low-pass filter coefficient in (0, 1]; 1 is classic error feedback.
        warmup_steps: per tensor, the first steps are dense.
        min_numel: smaller tensors are sent dense.
        clip_factor: this rank's gradient of each compressed tensor is clipped
            to ``clip_factor`` times the running level of its norm before it
            reaches the memory: the default remedy that keeps the Horovod
            recipe (lr x hvd.size(), momentum 0.9) stable (docs/convergence.md).
            Scale-free: no threshold to tune per model. None turns it off.
        stagger_leaders: offset each tensor's leader by its registration
            index. False (the paper's schedule): every tensor of a step has the
            same leader, which never waits, so ranks may hand their gradients
            over in any order. True spreads the selections over the ranks but
            needs the same hand-over order on every rank.
        share_timeout: seconds to wait for the leader's index share before
            raising instead of hanging.
        process_set: the Horovod process set the optimizer reduces over (the
            same object given to hvd.DistributedOptimizer); None: every rank.

    Dense (memory untouched): warm-up steps, tensors below ``min_numel``,
    non-floating gradients and float64 gradients. Compressed gradients may be
    float32, float16 or bfloat16; the memory is float32 either way.
    """

    def __init__(self, named_parameters: NamedParameters, ratio: float = 0.01,
                 beta: float = 0.1, warmup_steps: int = 0, min_numel: int = 1024,
                 clip_factor: float | None = DEFAULT_CLIP_FACTOR,
                 stagger_leaders: bool = False, share_timeout: float = 120.0,
                 process_set: Any = None) -> None:
        self.config = ScaleComConfig(ratio=ratio, beta=beta, warmup_steps=warmup_steps,
                                     min_numel=min_numel, clip_factor=clip_factor)
        if not share_timeout > 0:
            raise ValueError(f"share_timeout must be positive, got {share_timeout!r}")
        self.share_timeout = float(share_timeout)
        self._stagger = bool(stagger_leaders)
        self.process_set = hvd.global_process_set if process_set is None else process_set
        if not isinstance(self.process_set, hvd.ProcessSet):
            raise TypeError("process_set must be a horovod.torch.ProcessSet (from "
                            f"hvd.add_process_set) or None, got {type(process_set).__name__}")
        self._config_checked = False
        pairs = _named_list(named_parameters)
        names = [n for n, _ in pairs]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"parameter names must be unique; repeated: {', '.join(dups)}")
        self._states = {name: _TensorState(name, p, i if stagger_leaders else 0, index=i)
                        for i, (name, p) in enumerate(pairs)}
        # Candidates by shape: finding which parameter's .grad a tensor is costs
        # a few identity checks, not a scan of the model.
        self._by_shape: dict[torch.Size, list[_TensorState]] = defaultdict(list)
        for state in self._states.values():
            self._by_shape[state.param.shape].append(state)
        self._last: dict[str, dict[str, Any]] = {}
        self._cuda_ops: CudaOps | None = None     # loaded at the first CUDA gradient
        self._index_share = None     # the MPI index share, opened by _check_config
        self._broadcast = BroadcastShare(self.process_set, self.share_timeout)   # or Horovod's
        self._leaked: list[torch.Tensor] = []     # receive buffers of timed-out shares
        self._watch = Watch(self.config)     # the relative clip and the divergence guard
        # Under Horovod Elastic the world changes; horovod_scalecom.torch.elastic's
        # TorchState tells ScaleCom when (world_changed) and must hold it.
        self._elastic = os.environ.get("HOROVOD_ELASTIC") == "1"
        self._held_by_state = False

    # -- Horovod's Compressor interface -------------------------------------------

    def compress(self, tensor: torch.Tensor) -> tuple[torch.Tensor, _Ctx]:
        state = self._by_grad(tensor)
        if state is None or not state.checked:
            state = self._first_sight(tensor, state, horovod_call())
        self._check_config()
        ctx = _Ctx(state, None, tensor.shape, tensor.dtype)
        t = state.step
        state.step += 1
        numel = tensor.numel()
        size = self.process_set.size()
        if self._goes_dense(t, tensor) or size == 1:
            self._last[state.name] = self._record(state, numel, None, None, 0.0, 0.0, 0.0)
            # Horovod's CPU allreduce has no bfloat16: such dense tensors travel as float32.
            return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor), ctx
        if tensor.is_sparse:
            raise ValueError(f"ScaleCom: the gradient of {state.name} is sparse; "
                             "use sparse_as_dense=True in hvd.DistributedOptimizer")
        kernels = self._kernels(tensor, state.name)
        self._prepare(state, tensor)
        self._watch.flush_if_behind(len(self._states))

        k = self.config.k(numel)
        lead = leader(t, state.offset, size)
        tc = time.perf_counter()
        grad = tensor.detach().reshape(-1)
        grad = (grad if grad.dtype == torch.float32 else grad.float()).contiguous()
        norm, scale = self._watch.clip(state, t, grad)
        if scale != 1.0:
            # In place: grad is p.grad (which the exchange's result replaces) or
            # a float32 copy of it; no new tensor, no page faults.
            grad.mul_(scale)
        t0 = time.perf_counter()
        if self.process_set.rank() == lead:
            indices = kernels.select_topk(state.memory, grad, k)
        else:
            indices = torch.empty(k, dtype=torch.int32, device=tensor.device)
        t1 = time.perf_counter()
        ctx.share = self._share(indices, lead, state, t)
        t2 = time.perf_counter()
        values, nonfinite = kernels.gather_update_(state.memory, grad, indices, self.config.beta)
        t3 = time.perf_counter()
        ctx.indices = indices
        self._last[state.name] = self._record(state, numel, k, lead, t1 - t0, t2 - t1, t3 - t2)
        record = self._last[state.name]
        record.update(nonfinite_kept=nonfinite, grad_norm=norm, clip_scale=scale, clip_s=t0 - tc)
        self._watch.memory(state.name, t, nonfinite)
        return values, ctx

    def decompress(self, tensor: torch.Tensor, ctx: _Ctx | None) -> torch.Tensor:
        if ctx is None:
            # Horovod's sparse allreduce (an allgather) never calls compress.
            self._bypassed(tensor)
            return tensor
        if ctx.indices is None:
            return tensor.to(ctx.dtype)
        if ctx.share is not None:
            # The leader's broadcast: done, since every rank has sent its values.
            wait(ctx.share, f"the indices of {ctx.state.name}", self.share_timeout)
        numel = ctx.shape.numel()
        kernels = self._kernels(tensor, ctx.state.name)
        start = time.perf_counter()
        self._watch.exchange(ctx.state.name, ctx.state.step - 1, tensor)
        dense = kernels.scatter(ctx.indices, tensor.to(torch.float32).contiguous(), numel)
        result = dense.view(ctx.shape).to(ctx.dtype)
        record = self._last.get(ctx.state.name)
        if record is not None:
            record["decompress_s"] = time.perf_counter() - start
        return result

    # -- checkpoints and figures ----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Memory and step counter of every tensor, for this rank (save one per rank)."""
        return {
            "version": STATE_VERSION,
            "rank": self.process_set.rank(),
            "size": self.process_set.size(),
            "config": self.config.as_dict(),
            "tensors": {name: {"step": s.step, "level": s.level,
                               "memory": None if s.memory is None else s.memory.clone()}
                        for name, s in self._states.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], same_world: bool = True) -> None:
        """Restore what state_dict() saved on this same rank of a job of the same size.

        ``same_world=False`` skips that check: Horovod Elastic's restore, where
        this process takes back its own memory under whatever rank it has next.
        """
        if state_dict.get("version") not in (1, STATE_VERSION):   # 1: before the clip levels
            raise ValueError(f"unknown ScaleCom state version {state_dict.get('version')!r}")
        here = (self.process_set.rank(), self.process_set.size()) if same_world else None
        if here is not None and (state_dict["rank"], state_dict["size"]) != here:
            raise ValueError(
                f"this ScaleCom state was saved by rank {state_dict['rank']} of "
                f"{state_dict['size']}; it is being loaded on rank {here[0]} of {here[1]}. "
                "The memory is per rank: save and load one state per rank.")
        saved = state_dict["tensors"]
        unknown = sorted(set(saved) - set(self._states))
        if unknown:
            raise ValueError(f"the ScaleCom state holds tensors this model does not have: "
                             f"{', '.join(unknown)}")
        for name, entry in saved.items():
            state = self._states[name]
            memory = entry["memory"]
            if memory is not None and memory.numel() != state.param.numel():
                raise ValueError(f"{name}: saved memory has {memory.numel()} elements, the "
                                 f"parameter {state.param.numel()}")
        self._broadcast.reset()     # receives posted for the old steps
        for name, entry in saved.items():
            state = self._states[name]
            state.step = int(entry["step"])
            state.level = float(entry.get("level", math.nan))   # NaN: set at the next step
            memory = entry["memory"]
            state.memory = None if memory is None else (
                memory.detach().to(torch.float32).reshape(-1).clone().contiguous())

    def world_changed(self) -> None:
        """Horovod Elastic changed the world (a rank joined or left, or the job
        recovered from a failure): collective, on every rank of the new world,
        after Horovod's reset. Everything that depends on the world is decided
        again: the configuration check runs in the new world, and every rank
        takes rank 0's step counters, so all pick the same leader for every
        tensor (a joining rank's counters start at zero). The memory stays
        this process's own: a joining rank starts from an empty one."""
        if self.process_set.process_set_id != 0:
            raise ValueError("ScaleCom under Horovod Elastic runs over every rank; "
                             "process sets are not supported there")
        self._held_by_state = True
        self._config_checked = False
        self._index_share = None     # Elastic runs on Gloo: Horovod's broadcast carries them
        self._broadcast.reset()
        self._last.clear()
        steps = hvd.broadcast_object({n: s.step for n, s in self._states.items()},
                                     root_rank=0, name="scalecom.elastic.steps")
        for name, step in steps.items():
            self._states[name].step = step
        self._check_config()

    def stats(self) -> dict[str, Any]:
        """Figures of each tensor's last compress call and their totals.

        ``bytes_sent`` follows the byte model of DESIGN.md section 4 (index
        share + ring allreduce of k float32 values); ``dense_bytes`` is what a
        dense ring allreduce of the same tensors would send. For CUDA
        gradients ``select_s`` and ``update_s`` time the kernel launches, not
        the kernels (they run asynchronously on the current stream).
        """
        # On a GPU the counts are device tensors until asked for (here).
        tensors = {name: {**v, "nonfinite_kept": int(v["nonfinite_kept"])}
                   for name, v in self._last.items()}
        total = lambda key: sum(v[key] for v in tensors.values())  # noqa: E731
        sent, dense = total("bytes_sent"), total("dense_bytes")
        return {
            "bytes_sent": sent,
            "dense_bytes": dense,
            "compression": dense / sent if sent else 1.0,
            "select_s": total("select_s"),
            "comm_s": total("share_s"),
            "update_s": total("update_s"),
            "clip_s": sum(v.get("clip_s", 0.0) for v in tensors.values()),
            # Writing the dense mean back (the scatter), after Horovod's allreduce.
            "decompress_s": total("decompress_s"),
            # Memory entries that refused a NaN/Inf update (DESIGN's non-finite policy).
            "nonfinite_kept": total("nonfinite_kept"),
            # How the leaders' indices travel: ScaleCom's MPI messages or Horovod's broadcast.
            "index_share": "mpi" if self._index_share is not None else "horovod",
            # Tensors whose gradient the relative clip scaled down at their last step.
            "clipped": sum(1 for v in tensors.values() if v.get("clip_scale", 1.0) < 1.0),
            # The divergence guard's first event per tensor (horovod_scalecom.guard).
            "divergence": self._watch.stats(),
            "tensors": tensors,
        }

    # -- internals --------------------------------------------------------------------

    def _goes_dense(self, step: int, tensor: torch.Tensor) -> bool:
        """Warm-up steps, small tensors and unsupported dtypes skip compression."""
        return (step < self.config.warmup_steps or tensor.numel() < self.config.min_numel
                or tensor.dtype not in COMPRESSIBLE_DTYPES)

    def _bypassed(self, tensor: torch.Tensor) -> None:
        """A sparse gradient that Horovod gathered without ScaleCom
        (sparse_as_dense=False): said once, and never expected at the index
        share again."""
        state = next((s for s in self._by_shape.get(tensor.shape, ()) if not s.bypassed
                      and s.param.grad is not None and s.param.grad.is_sparse), None)
        if state is None:
            return
        state.bypassed = True
        warnings.warn(
            f"ScaleCom: the gradient of {state.name} is sparse, so Horovod's sparse allgather "
            "carried it, uncompressed and without ScaleCom. Pass sparse_as_dense=True to "
            "hvd.DistributedOptimizer to compress it.", stacklevel=3)
        size = self.process_set.size()
        if (self._index_share is None and size > 1 and not self._stagger
                and not self._goes_dense(state.step, state.param)):
            self._broadcast.complete(state.name, state.param, self.config.k(state.param.numel()),
                                     leader(state.step, state.offset, size), state.step)

    def _kernels(self, tensor: torch.Tensor, name: str):
        """The CPU core's ops, or the CUDA kernels for a gradient on a GPU."""
        if tensor.device.type == "cpu":
            return ops
        if tensor.device.type != "cuda":
            raise RuntimeError(f"ScaleCom: the gradient of {name} is on {tensor.device}; "
                               "ScaleCom runs on CPU and CUDA tensors")
        if self._cuda_ops is None:
            try:
                self._cuda_ops = CudaOps()
            except ImportError as exc:
                raise RuntimeError(f"ScaleCom: the gradient of {name} is on {tensor.device}, "
                                   f"but {exc}") from exc
        return self._cuda_ops

    def _named(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, s.param) for name, s in self._states.items()]

    def _by_grad(self, tensor: torch.Tensor) -> _TensorState | None:
        """The state of the parameter whose .grad the tensor is, if any."""
        for state in self._by_shape.get(tensor.shape, ()):
            if state.param.grad is tensor:
                return state
        for state in self._states.values():     # a parameter whose shape changed
            if state.param.grad is tensor:
                return state
        return None

    def _first_sight(self, tensor: torch.Tensor, state: _TensorState | None,
                     call: HorovodCall | None) -> _TensorState:
        """A tensor that is no parameter's .grad (sparse_as_dense's copy) is
        traced back through Horovod's call; once per tensor, the call's op and
        process set are checked and the numel against the parameter's (the
        size limits, check_numel, when its memory is made: _prepare)."""
        if state is None and call is not None and call.param is not None:
            state = next((s for s in self._states.values() if s.param is call.param), None)
        if state is None:
            if any(s.param is tensor for s in self._states.values()):
                raise ValueError(
                    "ScaleCom was handed a parameter, not a gradient: op=hvd.Adasum exchanges "
                    "the parameters' updates, which ScaleCom does not compress. Use "
                    "op=hvd.Average (or hvd.Sum) with ScaleCom, or Adasum without it.")
            raise ValueError(
                f"ScaleCom was handed a tensor of shape {tuple(tensor.shape)} that is not the "
                ".grad of any parameter it was given. Build ScaleCom from the same model (or "
                "named_parameters) as hvd.DistributedOptimizer; it does not compress other "
                "tensors.")
        if not state.checked:
            if call is not None:
                check_call(call, hvd, self.process_set)
                self._broadcast.follow(call.owner)
            if tensor.numel() != state.param.numel():
                raise ValueError(f"ScaleCom: the gradient of {state.name} has {tensor.numel()} "
                                 f"elements, the parameter {state.param.numel()}")
            state.checked = True
        return state

    def _check_config(self) -> None:
        """Once, at the first exchange: every rank must run ScaleCom with the same
        knobs over the same parameters (names and sizes, and so each tensor's
        leader and numel). Otherwise index shares and ring messages would pair
        unrelated tensors, or one rank would wait for a collective the others
        never start; caught here, the error names the difference. Every rank's
        first compress makes this call, whichever tensor it is at."""
        if self._elastic and not self._held_by_state:
            # TorchState's sync (world_changed) runs first thing in hvd.elastic.run.
            raise unheld_error("horovod_scalecom.torch.elastic.TorchState")
        if self._config_checked or self.process_set.size() == 1:
            return
        self._config_checked = True
        cfg = self.config
        params = "|".join(f"{n}:{s.param.numel()}" for n, s in self._states.items())
        values = (cfg.ratio, cfg.beta, cfg.warmup_steps, cfg.min_numel, self._stagger,
                  cfg.clip_factor_or_zero, len(self._states), zlib.crc32(params.encode()))
        mine = torch.tensor([values], dtype=torch.float64)
        every = wait(hvd.allgather_async(mine, name="scalecom.config",
                                         process_set=self.process_set),
                     "ScaleCom's configuration from every rank of "
                     f"{describe_process_set(self.process_set)}", self.share_timeout)
        names = ("ratio", "beta", "warmup_steps", "min_numel", "stagger_leaders",
                 "clip_factor", "number of parameters", "parameter names/sizes checksum")
        differ = disagreement(names, every.numpy())
        if differ:
            raise ValueError(f"ScaleCom: ranks disagree on {differ}; every rank must build "
                             "ScaleCom with the same arguments from the same model")
        # Every rank gets here once, after the same collective: the place for
        # the collective that opens the MPI index share (on every rank: a
        # process set's indices go through Horovod's broadcast).
        if self.process_set.process_set_id == 0:
            self._index_share = open_index_share(len(self._states), horovod_barrier)

    def _prepare(self, state: _TensorState, tensor: torch.Tensor) -> None:
        numel = tensor.numel()
        if state.memory is None:
            check_numel(numel, state.name)
            state.memory = torch.zeros(numel, dtype=torch.float32, device=tensor.device)
        elif state.memory.numel() != numel:
            raise ValueError(f"ScaleCom: the gradient of {state.name} has {numel} elements, "
                             f"its memory {state.memory.numel()}; shapes must not change")
        elif state.memory.device != tensor.device:
            # A checkpoint loaded onto the CPU, or a model moved: the memory follows.
            state.memory = state.memory.to(tensor.device)

    def _share(self, indices: torch.Tensor, lead: int, state: _TensorState,
               step: int) -> int | None:
        """The leader's indices to every rank, in place. Returns the leader's
        own Horovod broadcast, which it does not wait for here: a leader that
        waited could wait for a rank that waits for it elsewhere."""
        if self._index_share is None:
            if self.process_set.rank() == lead:
                return self._broadcast.lead(indices, lead, state.name, step)
            self._broadcast.receive(indices, lead, state.name, step, self._coming)
            return None
        what = f"the indices of {state.name} from leader rank {lead}"
        host = indices if indices.device.type == "cpu" else indices.cpu()
        try:
            arrived = self._index_share.share(host.numpy(), lead, state.index,
                                              self.share_timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"ScaleCom: waiting for {what} failed: {exc}") from exc
        if not arrived:
            self._leaked.append(host)   # MPI may still write into it
            raise RuntimeError(timed_out(what, self.share_timeout))
        if host is not indices:
            indices.copy_(host)
        return None

    def _coming(self, step: int, coming: Any) -> list[tuple[str, torch.Tensor, int, int]]:
        """(name, parameter, k, leader) of each tensor of ``coming`` (the
        optimizer's parameters) compressed at ``step`` and led by another rank."""
        size, me = self.process_set.size(), self.process_set.rank()
        found = []
        for s in self._states.values():
            if (s.step != step or s.bypassed or s.param not in coming
                    or self._goes_dense(step, s.param)):
                continue
            lead = leader(step, s.offset, size)
            if lead != me:
                found.append((s.name, s.param, self.config.k(s.param.numel()), lead))
        return found

    def _record(self, state, numel, k, lead, select_s, share_s, update_s) -> dict[str, Any]:
        size = self.process_set.size()
        dense = bytes_model.dense_ring_allreduce(numel, size)
        return {
            "numel": numel,
            "k": k,
            "leader": lead,
            "step": state.step - 1,
            "bytes_sent": dense if k is None else bytes_model.path_a(k, size),
            "dense_bytes": dense,
            "nonfinite_kept": 0,
            "select_s": select_s,
            "share_s": share_s,
            "update_s": update_s,
            "decompress_s": 0.0,
        }
