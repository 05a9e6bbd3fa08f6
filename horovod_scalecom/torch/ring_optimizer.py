"""The ScaleCom ring for PyTorch: a Horovod-style DistributedOptimizer whose compressed
gradients go through ScaleCom's ring allreduce over MPI.

    optimizer = horovod_scalecom.torch.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(),
        compression=ScaleCom(model, ratio=0.01))

The parameters are cut into groups, the same on every rank (DDP's buckets:
about 25 MB each, from the last registered parameter to the first). When
backward has accumulated the last gradient of a group, a gradient hook
queues the group's exchange on the ring (``horovod_scalecom._ring``:
chunk-wise cyclic owners, (index, value) pairs in the reduce-scatter, values
in the allgather, so per-rank traffic does not grow with n), which runs on
its own thread and MPI communicator while backward goes on. Groups start in
order on every rank; ``step()``/``synchronize()`` starts those backward left
incomplete and waits. The other gradients (warm-up steps, tensors below
``min_numel``, non-floating) go through Horovod's allreduce from the same
hooks. Grouping changes when bytes travel, never the numbers.

ScaleCom's memory and step counters are the ones of the ``compression``
object, so its state_dict()/load_state_dict() checkpoint the ring too. CUDA
gradients keep their memory on the GPU (the engine's CUDA kernels; messages
through CUDA-aware MPI or pinned host staging).
"""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from typing import Any, Iterable, Sequence

import torch
import horovod.torch as hvd

from horovod_scalecom.ring_buckets import DEFAULT_BUCKET_CAP_MB, make_groups
from horovod_scalecom.horovod_internals import HOROVOD_OPTIMIZER_MODULE, require
from horovod_scalecom.ring import close_at_exit, load_ring, refuse_without_mpi
from horovod_scalecom.ring_arguments import (
    check_backward_passes, check_groups, refuse_op, refuse_predivide, refuse_process_set,
    require_scalecom, sparse_gradient_error)
from horovod_scalecom.torch.horovod_exit import horovod_barrier
from horovod_scalecom.torch.horovod_path import ScaleCom
from horovod_scalecom.torch.ring_start import RingStart, ring_device
from horovod_scalecom.torch.tensor_step import enter

require("torch")   # hvd.broadcast_optimizer_state's test of the class's module

# Who refuses, and what to use instead (horovod_scalecom.ring_arguments).
OURS = "horovod_scalecom.torch.DistributedOptimizer"
HOROVODS = "hvd.DistributedOptimizer"


class _Group:
    """Parameters whose gradients the ring exchanges together, and how far
    this step has got with them."""

    def __init__(self, params: list[tuple[str, torch.Tensor]]) -> None:
        self.params = params          # registration order: the order in the message
        self.waiting = len(params)    # parameters whose last backward pass is still to come
        self.started = False


class _RingOptimizer(torch.optim.Optimizer):
    """Mixed into the wrapped optimizer's class, as Horovod does."""

    def __init__(self, params, named_parameters, compression: ScaleCom,
                 backward_passes_per_step: int, op, groups, bucket_cap_mb: float,
                 sparse_as_dense: bool) -> None:
        super(self.__class__, self).__init__(params)
        _check_arguments(compression, op, backward_passes_per_step)
        self._compression = compression
        self.backward_passes_per_step = backward_passes_per_step
        self._sparse_as_dense = bool(sparse_as_dense)
        self._should_synchronize = True
        self._params = self._ring_order(named_parameters)
        # Horovod's own table, which Horovod's tests and some user code read.
        self._parameter_names = {p: name for name, p in self._params}
        place = {id(p): i for i, (_, p) in enumerate(self._params)}
        self._groups = [_Group([self._params[i] for i in members]) for members in make_groups(
            [4 * p.numel() for _, p in self._params], groups, bucket_cap_mb,
            lambda p: place[id(p)])]
        self._group_of = {id(p): g for g in self._groups for _, p in g.params}
        self._passes_left = {id(p): backward_passes_per_step for _, p in self._params}
        if hvd.size() > 1:
            self._engine = load_ring().Engine()
            close_at_exit(self._engine, horovod_barrier)
        else:
            self._engine = None
        self._start = RingStart(self._engine, compression)
        self._last: dict[str, Any] = {}
        self._leaked: list[Any] = []
        self._synchronized = False     # synchronize() ran, and no backward since
        self._begin_step()
        self._hooks = self._hook_gradients()

    def _ring_order(self, named_parameters) -> list[tuple[str, torch.Tensor]]:
        """The (name, parameter) pairs this optimizer updates, in ScaleCom's
        registration order: the same on every rank, the ring's tensor order."""
        state = self._compression.state
        named = list(named_parameters) if named_parameters is not None else [
            (name, p) for name, p in state.named_parameters()]
        by_id = {id(p): name for name, p in named}
        params: list[tuple[str, torch.Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    if id(p) not in by_id:
                        raise ValueError("an optimizer parameter is not in named_parameters")
                    params.append((by_id[id(p)], p))
        unknown = [n for n, _ in params if n not in state.tensors]
        if unknown:
            raise ValueError(f"ScaleCom was not given these parameters: {', '.join(unknown)}")
        order = {name: i for i, name in enumerate(state.tensors)}
        params.sort(key=lambda item: order[item[0]])
        return params

    def _hook_gradients(self) -> list:
        # Through a weak reference, and removed with the optimizer: a model
        # wrapped again (a new optimizer, an Elastic reset) must not keep
        # feeding the old one's exchanges.
        this = weakref.ref(self)

        def ready(p: torch.Tensor) -> None:
            optimizer = this()
            if optimizer is not None:
                optimizer._gradient_ready(p)
        return [p.register_post_accumulate_grad_hook(ready) for _, p in self._params]

    def __del__(self) -> None:
        for hook in getattr(self, "_hooks", ()):
            hook.remove()

    # -- a step: groups start from backward's hooks, synchronize() finishes them ----

    def _begin_step(self) -> None:
        for group in self._groups:
            group.waiting = len(group.params)
            group.started = False
        for key in self._passes_left:
            self._passes_left[key] = self.backward_passes_per_step
        self._next = 0                 # the next group to start: every rank starts in order
        self._ring: list[tuple] = []   # (name, p, grad, out) of the compressed tensors started
        self._dense: list[tuple] = []  # (p, grad, handle) of Horovod's dense allreduces
        self._held: list[Any] = []     # what the engine reads and writes until wait()
        self._on_gpu: bool | None = None
        self._python_s = 0.0           # seconds of Python spent starting groups
        self._densified: list[torch.Tensor] = []   # sparse_as_dense: made sparse again at the end

    def _gradient_ready(self, p: torch.Tensor) -> None:
        """Backward accumulated p's gradient: on its last pass of the step, the
        group may be complete, and the groups that are, in order, start."""
        key = id(p)
        self._synchronized = False
        if self._passes_left[key] == 0:
            raise AssertionError(
                "Gradients were computed more than backward_passes_per_step times before "
                "call to step(). Increase backward_passes_per_step to accumulate gradients "
                "locally.")
        self._passes_left[key] -= 1
        if self._passes_left[key] == 0:
            self._group_of[key].waiting -= 1
            self._start_ready_groups()

    def _start_ready_groups(self, everything: bool = False) -> None:
        """Starts the complete groups in order (``everything``: all that are
        left, backward being over). A group started during backward selects
        and updates on one thread, since backward keeps torch's threads busy
        on the same cores; the others take torch's thread count. The thread
        count changes no bit (exact selection, elementwise update)."""
        begin = time.perf_counter()
        threads = torch.get_num_threads() if everything else 1
        while self._next < len(self._groups):
            group = self._groups[self._next]
            if group.waiting > 0 and not everything:
                break
            self._start_group(group, threads)
            self._next += 1
        self._python_s += time.perf_counter() - begin

    def _start_group(self, group: _Group, threads: int) -> None:
        """Dense tensors to Horovod's allreduce, the others to the ring."""
        scalecom = self._compression.state
        scalecom.check_config()
        group.started = True
        ring = []
        for name, p in group.params:
            self._densify(name, p)
            state = scalecom.tensors[name]
            t = state.step
            state.step += 1
            if enter(scalecom, state, p.grad, t):      # a single rank has no engine: dense
                ring.append((name, p, state, t))
            else:
                grad = p.grad if p.grad.dtype != torch.bfloat16 else p.grad.float()
                self._dense.append((p, grad, hvd.allreduce_async_(
                    grad, name=f"scalecom.dense.{name}", op=hvd.Average)))
        if ring:
            self._start_ring(ring, threads)

    def _densify(self, name: str, p: torch.Tensor) -> None:
        if p.grad is None:
            p.grad = torch.zeros_like(p)   # another rank may have a gradient for it
        if p.grad.is_sparse:
            if not self._sparse_as_dense:
                raise sparse_gradient_error(OURS, name, " (or use a dense embedding, "
                                                  "sparse=False)")
            p.grad = p.grad.to_dense()
            self._densified.append(p)

    def _start_ring(self, ring: list, threads: int) -> None:
        if self._on_gpu is None:   # the step's first group decides
            self._on_gpu = self._ring_device(ring[0][1].grad, ring[0][0]) is not None
        on_gpu = self._on_gpu
        for name, p, _, _ in ring:
            if (self._ring_device(p.grad, name) is not None) != on_gpu:
                raise RuntimeError("ScaleCom ring: some compressed gradients are on a GPU and "
                                   "some on the CPU; the ring exchanges one kind per step")
        # Held until the exchange ends; for ever if it times out (the engine's
        # thread may still write into them).
        self._held.append(self._start.device(ring, self._ring_device, self._ring) if on_gpu
                          else self._start.host(ring, threads, self._ring))

    def synchronize(self) -> None:
        """Starts the groups backward left incomplete (zeros for parameters
        without a gradient) and waits for every exchange of the step."""
        begin = time.perf_counter()
        self._start_ready_groups(everything=True)
        started = time.perf_counter()
        ring_bytes, timings = self._wait_ring()
        ring_done = time.perf_counter()
        self._copy_ring_out()
        copied = time.perf_counter()
        self._wait_dense()
        end = time.perf_counter()
        self._last = self._start.figures(self._ring, len(self._dense), self._on_gpu,
                                         self._python_s, ring_bytes, timings, {
            "start_s": started - begin, "ring_wait_s": ring_done - started,
            "copy_out_s": copied - ring_done, "dense_wait_s": end - copied,
            "synchronize_s": end - begin})
        self._synchronized = True
        self._begin_step()

    def _wait_ring(self) -> tuple[int, dict]:
        """The ring's bytes sent and its phase timings, once it has ended."""
        if not self._ring:
            return 0, {}
        try:
            ring_bytes = self._engine.wait(self._compression.share_timeout)
        except TimeoutError as exc:
            self._leaked.append(self._held)
            raise RuntimeError(f"ScaleCom ring on rank {hvd.rank()}: {exc}") from exc
        return ring_bytes, self._engine.last_timings()

    def _copy_ring_out(self) -> None:
        state = self._compression.state
        for name, p, grad, out in self._ring:
            state.watch.exchange(name, state.tensors[name].step - 1, out)
            if out is not grad:
                p.grad.copy_(out.view_as(p.grad))

    def _wait_dense(self) -> None:
        for p, grad, handle in self._dense:
            result = hvd.synchronize(handle)
            if result is not p.grad:
                p.grad.copy_(result)
        for p in self._densified:
            # As Horovod: the optimizer gets the sparse kind of gradient it was
            # made for (SparseAdam refuses dense ones).
            p.grad = p.grad.to_sparse()

    @contextlib.contextmanager
    def skip_synchronize(self):
        """Horovod's pattern for work between the exchange and the update:

            optimizer.synchronize()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            with optimizer.skip_synchronize():
                optimizer.step()
        """
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    # Looked up on the instance: a test routes host tensors through the
    # device branch by replacing it (tests/workers/common.py).
    _ring_device = staticmethod(ring_device)

    def stats(self) -> dict[str, Any]:
        """Figures of the last step: bytes this rank sent in the ring (counted
        by the engine), what a dense allreduce of the same tensors would send,
        the time synchronize() took, and where the step's time went
        (``breakdown``, seconds; see docs/api.md), and the divergence guard's
        first event per tensor (``divergence``, horovod_scalecom.guard)."""
        return {**self._last, "divergence": self._compression.state.watch.stats()}

    def step(self, closure=None):
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn(
                    "optimizer.step() called without optimizer.skip_synchronize() after "
                    "optimizer.synchronize(): the gradients were exchanged once and are not "
                    "exchanged again (that would feed averaged gradients into ScaleCom's "
                    "memory). Use `with optimizer.skip_synchronize(): optimizer.step()`.")
            else:
                self.synchronize()
        result = super(self.__class__, self).step(closure)
        self._synchronized = False
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        if any(g.started for g in self._groups):
            raise AssertionError(
                "optimizer.zero_grad() was called after loss.backward() but before "
                "optimizer.step() or optimizer.synchronize(): the ring is exchanging these "
                "gradients")
        return super(self.__class__, self).zero_grad(set_to_none)


def _check_arguments(compression: Any, op: Any, backward_passes_per_step: int) -> None:
    require_scalecom(OURS, HOROVODS, compression, ScaleCom)
    refuse_op(OURS, HOROVODS, hvd, op)
    refuse_process_set(OURS, HOROVODS, None, compression.process_set.process_set_id)
    check_backward_passes(OURS, backward_passes_per_step)


def _refuse_what_the_ring_cannot_do(compression, process_set, gradient_predivide_factor,
                                    num_groups, groups) -> None:
    # The same words as TensorFlow's ring (horovod_scalecom.ring_arguments).
    require_scalecom(OURS, HOROVODS, compression, ScaleCom)
    refuse_process_set(OURS, HOROVODS,
                       None if process_set is None else process_set.process_set_id,
                       compression.process_set.process_set_id)
    refuse_without_mpi(OURS, HOROVODS, hvd.size(), hvd.mpi_enabled())
    refuse_predivide(OURS, HOROVODS, gradient_predivide_factor)
    check_groups(OURS, num_groups, groups)


def DistributedOptimizer(optimizer: torch.optim.Optimizer,
                         named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                         compression: ScaleCom | None = None,
                         backward_passes_per_step: int = 1, op=hvd.Average,
                         gradient_predivide_factor: float = 1.0,
                         num_groups: int = 0,
                         groups: int | Sequence[Sequence[torch.Tensor]] | None = None,
                         sparse_as_dense: bool = False,
                         process_set: Any = None,
                         bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB) -> torch.optim.Optimizer:
    """Wraps ``optimizer`` like ``hvd.DistributedOptimizer``, with the ScaleCom ring.

    ``compression`` must be a ScaleCom built from the same parameters. The
    gradients travel in groups: a group's exchange starts from backward's
    gradient hooks as soon as its last gradient is accumulated (on the last of
    ``backward_passes_per_step`` passes), so the ring overlaps the rest of
    backward; ``synchronize()`` (or ``step()``) starts the groups backward
    left incomplete (parameters without a gradient send zeros) and waits.

    Groups, the same on every rank: ``groups`` (a list of lists of
    parameters, the others alone) or ``num_groups``/``groups=N`` (N groups of
    consecutive parameters) as in Horovod; by default groups of at most
    ``bucket_cap_mb`` megabytes from the last registered parameter to the
    first (DDP's buckets). ``sparse_as_dense`` densifies sparse gradients
    before the exchange. The ring averages over every rank: ``op`` must be
    ``hvd.Average``, ``gradient_predivide_factor`` 1 and ``process_set`` the
    global one, and Horovod must run on MPI (not Gloo, not Elastic); for
    those, hvd.DistributedOptimizer with compression=ScaleCom(...) does them.
    """
    _refuse_what_the_ring_cannot_do(compression, process_set, gradient_predivide_factor,
                                    num_groups, groups)
    # Horovod's module, as its own wrapper class has: hvd.broadcast_optimizer_state
    # recognises a distributed optimizer by it and then steps the inner
    # optimizer only (a step of this one on the ranks without optimizer state
    # would start an exchange the others never join).
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_RingOptimizer.__dict__, __module__=HOROVOD_OPTIMIZER_MODULE))
    return cls(optimizer.param_groups, named_parameters, compression,
               backward_passes_per_step, op, groups if groups is not None else (num_groups or None),
               bucket_cap_mb, sparse_as_dense)
