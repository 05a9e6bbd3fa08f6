"""ScaleCom as a Horovod Compressor for PyTorch: ScaleCom through Horovod's allreduce.

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
non-leaders. Every step but 3 and 5 is the per-tensor step that the DDP
hook takes too (``horovod_scalecom.torch.tensor_step``); this module keeps
how the indices travel and Horovod's side of the exchange. For CUDA gradients they are the CUDA kernels
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
(``horovod_scalecom.torch.horovod_share``). The choice is made once, alike
on every rank; ``$HOROVOD_SCALECOM_INDEX_SHARE=horovod`` forces the broadcast.

A tensor is identified by the parameter whose ``.grad`` it is, and so by
that parameter's name (never by call order): it works with
``zero_grad(set_to_none=True)``, ``backward_passes_per_step > 1``,
``groups``, and with ``sparse_as_dense`` (whose densified copy is traced back
to its parameter through Horovod's call, ``horovod_scalecom.horovod_internals``).

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

import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import horovod.torch as hvd
from horovod.torch.compression import Compressor

from horovod_scalecom.config import DEFAULTS, ScaleComConfig
from horovod_scalecom.horovod_call import check_call
from horovod_scalecom.horovod_internals import HorovodCall, horovod_call
from horovod_scalecom.ring import open_index_share
from horovod_scalecom.schedule import leader
from horovod_scalecom.torch.horovod_exit import horovod_barrier
from horovod_scalecom.torch.horovod_share import BroadcastShare
from horovod_scalecom.torch.horovod_group import HorovodGroup
from horovod_scalecom.torch.state import (
    NamedParameters, ScaleComState, TensorState)
from horovod_scalecom.torch.tensor_step import TensorStep, begin
from horovod_scalecom.stats import last_step, new_record
from horovod_scalecom.torch.horovod_waits import timed_out, wait


@dataclass
class _Ctx:
    state: TensorState
    step: TensorStep | None       # None: the tensor went dense
    shape: torch.Size
    dtype: torch.dtype
    share: int | None = None      # the leader's own Horovod broadcast, awaited in decompress


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
        clip_norm: if set, this rank first scales every floating gradient
            Horovod hands over to L2 norm at most ``clip_norm``, before the
            memory and the exchange (an absolute threshold; off by default).
        stagger_leaders: offset each tensor's leader by its registration
            index. False (the paper's schedule): every tensor of a step has the
            same leader, which never waits, so ranks may hand their gradients
            over in any order. True spreads the selections over the ranks but
            needs the same hand-over order on every rank.
        share_timeout: seconds to wait for another rank (the leader's index
            share, the configuration check, the ring's messages) before
            raising instead of hanging.
        process_set: the Horovod process set the optimizer reduces over (the
            same object given to hvd.DistributedOptimizer); None: every rank.

    The knobs, their defaults and checks are horovod_scalecom.config's, the
    same in every frontend. Dense (memory untouched): warm-up steps, tensors
    below ``min_numel``, non-floating gradients and float64 gradients.
    Compressed gradients may be float32, float16 or bfloat16; the memory is
    float32 either way.
    """

    def __init__(self, named_parameters: NamedParameters, ratio: float = DEFAULTS.ratio,
                 beta: float = DEFAULTS.beta, warmup_steps: int = DEFAULTS.warmup_steps,
                 min_numel: int = DEFAULTS.min_numel,
                 clip_factor: float | None = DEFAULTS.clip_factor,
                 clip_norm: float | None = DEFAULTS.clip_norm,
                 stagger_leaders: bool = DEFAULTS.stagger_leaders,
                 share_timeout: float = DEFAULTS.share_timeout, process_set: Any = None) -> None:
        config = ScaleComConfig(ratio=ratio, beta=beta, warmup_steps=warmup_steps,
                                min_numel=min_numel, clip_factor=clip_factor, clip_norm=clip_norm,
                                stagger_leaders=stagger_leaders, share_timeout=share_timeout)
        self.state = ScaleComState(named_parameters, config, HorovodGroup(process_set))
        self._last: dict[str, dict[str, Any]] = {}
        self._index_share = None     # the MPI index share, opened at the first exchange
        self._broadcast = BroadcastShare(self.process_set, self.share_timeout)   # or Horovod's
        self._leaked: list[torch.Tensor] = []     # receive buffers of timed-out shares

    @property
    def config(self) -> ScaleComConfig:
        return self.state.config

    @property
    def process_set(self) -> Any:
        return self.state.group.process_set

    @property
    def share_timeout(self) -> float:
        return self.state.share_timeout

    # -- Horovod's Compressor interface -------------------------------------------

    def compress(self, tensor: torch.Tensor) -> tuple[torch.Tensor, _Ctx]:
        state = self.state.by_grad(tensor)
        if state is None or not state.checked:
            state = self._first_sight(tensor, state, horovod_call())
        self._agree()
        shape, dtype = tensor.shape, tensor.dtype
        t = state.step
        state.step += 1
        step = begin(self.state, state, tensor, t, state.offset, flush=True)
        if step is None:
            self._last[state.name] = self._record(t, tensor.numel(), None, None)
            # Horovod's CPU allreduce has no bfloat16: such dense tensors travel as float32.
            return ((tensor.float() if tensor.dtype == torch.bfloat16 else tensor),
                    _Ctx(state, None, shape, dtype))
        if step.select() is None:
            step.indices = torch.empty(step.k, dtype=torch.int32, device=tensor.device)
        start = time.perf_counter()
        share = self._share(step.indices, step.lead, state, t)
        share_s = time.perf_counter() - start
        values = step.gather_update()
        self._last[state.name] = self._record(t, tensor.numel(), step.k, step.lead,
                                              share_s=share_s, **step.figures)
        return values, _Ctx(state, step, shape, dtype, share)

    def decompress(self, tensor: torch.Tensor, ctx: _Ctx | None) -> torch.Tensor:
        if ctx is None:
            # Horovod's sparse allreduce (an allgather) never calls compress.
            self._bypassed(tensor)
            return tensor
        if ctx.step is None:
            return tensor.to(ctx.dtype)
        if ctx.share is not None:
            # The leader's broadcast: done, since every rank has sent its values.
            wait(ctx.share, f"the indices of {ctx.state.name}", self.share_timeout)
        result = ctx.step.scatter(tensor)
        record = self._last.get(ctx.state.name)
        if record is not None:
            record["decompress_s"] = ctx.step.figures["decompress_s"]
        return result

    # -- checkpoints and figures ----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Memory and step counter of every tensor, for this rank (save one per rank)."""
        return self.state.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any], same_world: bool = True) -> None:
        """Restore what state_dict() saved on this same rank of a job of the same size
        (``same_world=False``: Horovod Elastic's restore, any rank)."""
        self.state.load_state_dict(state_dict, same_world)
        self._broadcast.reset()     # receives posted for the old steps

    def world_changed(self) -> None:
        """Horovod Elastic changed the world: collective, on every rank of the
        new world (ScaleComState.world_changed). Elastic runs on Gloo, so the
        leaders' indices travel by Horovod's broadcast from now on."""
        self._index_share = None
        self._broadcast.reset()
        self._last.clear()
        self.state.world_changed()

    def stats(self) -> dict[str, Any]:
        """Figures of each tensor's last compress call and their totals.

        ``bytes_sent`` follows the byte model of docs/algorithm.md (index
        share + ring allreduce of k float32 values); ``dense_bytes`` is what a
        dense ring allreduce of the same tensors would send. For CUDA
        gradients ``select_s`` and ``update_s`` time the kernel launches, not
        the kernels (they run asynchronously on the current stream).
        """
        # How the leaders' indices travel: ScaleCom's MPI messages or Horovod's broadcast.
        return last_step(self._last, self.state.watch.stats(),
                         "mpi" if self._index_share is not None else "horovod")

    # -- internals --------------------------------------------------------------------

    def _bypassed(self, tensor: torch.Tensor) -> None:
        """A sparse gradient that Horovod gathered without ScaleCom
        (sparse_as_dense=False): said once, and never expected at the index
        share again."""
        state = next((s for s in self.state.by_shape.get(tensor.shape, ()) if not s.bypassed
                      and s.param.grad is not None and s.param.grad.is_sparse), None)
        if state is None:
            return
        # Read before it is marked bypassed: the others posted while it was not.
        posted = self._posted_ahead(state, state.step, self._broadcast.coming())
        state.bypassed = True
        warnings.warn(
            f"ScaleCom: the gradient of {state.name} is sparse, so Horovod's sparse allgather "
            "carried it, uncompressed and without ScaleCom. Pass sparse_as_dense=True to "
            "hvd.DistributedOptimizer to compress it.", stacklevel=3)
        if posted:
            self._broadcast.complete(
                state.name, state.param, self.config.k(state.param.numel()),
                leader(state.step, state.offset, self.process_set.size()), state.step)
        self._broadcast.forget(state.name)

    def _first_sight(self, tensor: torch.Tensor, state: TensorState | None,
                     call: HorovodCall | None) -> TensorState:
        """A tensor that is no parameter's .grad (sparse_as_dense's copy) is
        traced back through Horovod's call; once per tensor, the call's op and
        process set are checked and the numel against the parameter's (the
        size limits, check_numel, when its memory is made: state.prepare)."""
        if state is None and call is not None and call.param is not None:
            state = next((s for s in self.state.tensors.values() if s.param is call.param), None)
        if state is None:
            if any(s.param is tensor for s in self.state.tensors.values()):
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

    def _agree(self) -> None:
        """The configuration check (ScaleComState.check_config); where it runs,
        every rank is at the same point: the place for the collective that
        opens the MPI index share (a process set's indices go through
        Horovod's broadcast)."""
        if self.state.check_config() and self.process_set.process_set_id == 0:
            self._index_share = open_index_share(len(self.state.tensors), horovod_barrier)

    def _share(self, indices: torch.Tensor, lead: int, state: TensorState,
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

    def _posted_ahead(self, s: TensorState, step: int, coming: Any) -> bool:
        """Whether the ranks that do not lead ``s`` post their receive of its
        indices at ``step`` before their first wait of that step. The one rule
        for both sides: the non-leaders post by it (``_coming``), and the
        leader closes by it the receives of a tensor that never comes through
        ScaleCom (``_bypassed``). ``coming``: the parameters the optimizer
        hands over at this step (None: no optimizer, nothing is posted ahead)."""
        # Staggered leaders may wait for each other anyway: that schedule needs
        # one hand-over order, and receives as they come.
        return (coming is not None and self._index_share is None
                and self.process_set.size() > 1 and not self.state.stagger_leaders
                and s.step == step and not s.bypassed and s.param in coming
                and not self.state.goes_dense(step, s.param))

    def _coming(self, step: int, coming: Any) -> list[tuple[str, torch.Tensor, int, int]]:
        """(name, parameter, k, leader) of each tensor of ``coming`` (the
        optimizer's parameters) compressed at ``step`` and led by another rank."""
        size, me = self.process_set.size(), self.process_set.rank()
        found = []
        for s in self.state.tensors.values():
            if not self._posted_ahead(s, step, coming):
                continue
            lead = leader(step, s.offset, size)
            if lead != me:
                found.append((s.name, s.param, self.config.k(s.param.numel()), lead))
        return found

    def _record(self, step: int, numel: int, k: int | None, lead: int | None,
                **figures: Any) -> dict[str, Any]:
        return new_record(numel, k, lead, step, self.process_set.size(), **figures)
