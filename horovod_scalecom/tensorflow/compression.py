"""ScaleCom as a Horovod Compressor for TensorFlow (the cyclic-leader exchange
of docs/algorithm.md).

The same algorithm, policy (horovod_scalecom.config) and C++ core as
horovod_scalecom.torch.ScaleCom, so both frontends return the same bits for
the same gradients. Per tensor, at its t-th allreduce (t counts warm-up steps
too), after ``clip_norm`` (if set) has scaled this rank's gradient ``g``:

0. ``g`` is clipped to ``clip_factor`` times the running level of its norm
   (this rank's: horovod_scalecom.reference.clip, the C++ core's op)
1. ``p = m + g``; the leader ``(t + offset) mod n`` selects ``I = top-k |p|``
2. ``I`` goes from the leader to every rank: a Horovod allgather to which
   only the leader contributes (k indices; the others none), so one op
   serves every leader, and the world's size and this rank are read when the
   graph runs (Horovod's size and rank ops), not when it is traced: a traced
   step stays right after Horovod Elastic changes the world
3. every rank gathers ``c = p[I]`` and applies the low-pass filter to ``m``
4. Horovod allreduces ``c``; ``decompress`` scatters the mean back.

Horovod calls ``compress`` while tracing (DistributedGradientTape wraps its
allreduce in a tf.function even in eager code, and Keras traces its train
step), so ScaleCom builds graph ops: the memory and step counter of each
tensor are tf.Variables, created outside the trace with ``tf.init_scope`` the
first time the tensor is seen, and tracked by this tf.Module, so
``tf.train.Checkpoint(scalecom=compression)`` saves and restores them.

A gradient is identified by its position among the gradients compressed in
the same traced graph (the position of its variable in the tape's or
optimizer's list) and its shape. That is fixed when the step is traced, the
same on every rank, in every retrace and in a restarted job, and it does not
depend on layer auto-names (``dense_1``) that change when a model is rebuilt,
nor on the order in which ops execute. The graph tensor name is kept for
error messages. Use one ScaleCom per tape or optimizer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
import horovod.tensorflow as hvd
from horovod.tensorflow.compression import Compressor

from horovod_scalecom import bytes_model
from horovod_scalecom.config import (
    CLIP_NORM_EPS, DEFAULTS, ScaleComConfig, check_numel)
from horovod_scalecom.horovod_call import check_call, unheld_error
from horovod_scalecom.horovod_internals import horovod_call, require
from horovod_scalecom.ring import close_at_exit, load_ring
from horovod_scalecom.stats import last_step, new_record
from horovod_scalecom.tensorflow._ops import ops
from horovod_scalecom.tensorflow.horovod_collectives import (
    INDEX_SHARE, RING_INDEX_SHARE, check_agreement, share_indices, world)
from horovod_scalecom.tensorflow.guard import Watch, divergence
from horovod_scalecom.tensorflow.registry import Registry, TensorEntry

require("tensorflow")   # the allreduce frames horovod_call reads


@dataclass
class _Ctx:
    entry: TensorEntry
    dense: tf.Tensor    # bool scalar: this step went dense (warm-up, callback)
    indices: tf.Tensor
    step: tf.Tensor     # the tensor's step counter at this exchange
    shape: tf.TensorShape
    dtype: tf.DType


class ScaleCom(tf.Module, Compressor):
    """ScaleCom compressor: CLT-k with a cyclic leader and a low-pass memory.

    The arguments are torch's ``ScaleCom`` ones, with its names, defaults
    and checks (horovod_scalecom.config.ScaleComConfig), less
    ``named_parameters``: here a gradient is known by its position in the
    variable list.

    Args:
        ratio: fraction rho of each tensor's elements that is sent,
            0 < rho <= 1 ("100x" compression is ratio=0.01).
        beta: low-pass filter coefficient in (0, 1]; 1 is classic error
            feedback, the paper uses ~0.1.
        warmup_steps: the first ``warmup_steps`` exchanges of each tensor are
            dense and leave the memory untouched.
        min_numel: tensors with fewer elements are sent dense.
        clip_factor: this rank's gradient of each compressed tensor is clipped
            to ``clip_factor`` times the running level of its norm before it
            reaches the memory (the same C++ op as torch's, the same
            numbers); None turns it off.
        clip_norm: if set, every floating gradient handed to ScaleCom is
            first scaled on this worker to L2 norm at most ``clip_norm``
            (``g * min(1, clip_norm / (||g|| + 1e-6))``), before the memory
            and the exchange: an absolute threshold, off by default, the
            remedy for the hard regime of docs/convergence.md. The same rule
            as torch's ``ScaleCom(clip_norm=...)``; torch's
            ``clip_before_exchange`` (torch only) clips each backward pass
            instead.
        stagger_leaders: offset each tensor's leader by its position in the
            variable list (False: the paper's schedule, one leader per step).
        share_timeout: seconds the ring (horovod_scalecom.tensorflow's
            DistributedGradientTape and keras DistributedOptimizer) waits for
            the other ranks before it raises instead of hanging. This
            compressor's index share is a Horovod collective: Horovod's stall
            check (HOROVOD_STALL_CHECK_TIME_SECONDS,
            HOROVOD_STALL_SHUTDOWN_TIME_SECONDS) bounds it, not share_timeout.
        process_set: the Horovod process set the tape or optimizer reduces
            over (the same object); None: every rank.
        name: the tf.Module's name.

    Dense, memory untouched: warm-up steps, steps while ``enabled`` is False
    (ScaleComCallback uses it), tensors below ``min_numel``, tensors of
    unknown size, and dtypes other than float32, float16 and bfloat16.
    """

    def __init__(self, ratio: float = DEFAULTS.ratio, beta: float = DEFAULTS.beta,
                 warmup_steps: int = DEFAULTS.warmup_steps, min_numel: int = DEFAULTS.min_numel,
                 clip_factor: float | None = DEFAULTS.clip_factor,
                 clip_norm: float | None = DEFAULTS.clip_norm,
                 stagger_leaders: bool = DEFAULTS.stagger_leaders,
                 share_timeout: float = DEFAULTS.share_timeout, process_set: Any = None,
                 name: str = "scalecom") -> None:
        super().__init__(name=name)
        self.process_set = hvd.global_process_set if process_set is None else process_set
        if not isinstance(self.process_set, hvd.ProcessSet):
            raise TypeError("process_set must be a horovod.tensorflow.ProcessSet (from "
                            f"hvd.add_process_set) or None, got {type(process_set).__name__}")
        self.config = ScaleComConfig(ratio=ratio, beta=beta, warmup_steps=warmup_steps,
                                     min_numel=min_numel, clip_factor=clip_factor,
                                     clip_norm=clip_norm, stagger_leaders=stagger_leaders,
                                     share_timeout=share_timeout)
        with tf.init_scope():
            if not tf.executing_eagerly():
                # The configuration check and the stats read values eagerly.
                raise RuntimeError(
                    "ScaleCom for TensorFlow runs with TensorFlow 2's eager runtime (Keras, "
                    "tf.function, DistributedGradientTape); TF1 graph mode "
                    "(tf.compat.v1.disable_eager_execution, sessions) is not supported")
            self.enabled = tf.Variable(True, trainable=False, name="enabled")
        self.memory: dict[str, tf.Variable] = {}
        self.steps: dict[str, tf.Variable] = {}
        # Per tensor, the last step's memory entries that refused a NaN/Inf update.
        self.nonfinite: dict[str, tf.Variable] = {}
        # Per tensor, the relative clip's level and last figures, the divergence guard's record.
        self.watch: dict[str, Watch] = {}
        self._registry = Registry()
        self._config_checked = False
        # Under Horovod Elastic, horovod_scalecom.tensorflow.elastic's State tells
        # ScaleCom when the world changed (world_changed) and must hold it.
        self._held_by_state = False
        # The ring's engine (horovod_scalecom.tensorflow.ring_tape), made at its first
        # exchange and kept here, not in the tape: eager code wraps a new tape
        # every step, and each engine is an MPI communicator and a thread.
        self._engine = None
        self._in_ring = False       # set by _use_in_ring()

    @property
    def share_timeout(self) -> float:
        return self.config.share_timeout

    def _use_in_ring(self) -> None:
        """Called by the ScaleCom ring's wrappers when they take this ScaleCom:
        its exchanges run in the ring, which stats() reports (no leaders, the
        ring's bytes) from the first step on, warm-up included."""
        self._in_ring = True

    def _ring_engine(self) -> Any:
        """The ring engine (horovod_scalecom.tensorflow.ring_tape), made at the first
        exchange, which every rank reaches together (MPI_Comm_dup is collective
        and has no timeout), and kept with the memory it works on."""
        if self._engine is None:
            self._engine = load_ring().Engine()
            close_at_exit(self._engine)
        return self._engine

    # -- Horovod's Compressor interface -------------------------------------------

    def compress(self, tensor: tf.Tensor) -> tuple[tf.Tensor, _Ctx | None]:
        # One function (55 lines) on purpose: the two tf.cond branches close over
        # the traced tensors and variables read above them, and splitting them
        # out would hand a dozen graph values through parameters.
        if isinstance(tensor, tf.IndexedSlices):
            raise ValueError("ScaleCom: sparse (IndexedSlices) gradient; pass "
                             "sparse_as_dense=True to Horovod")
        if tf.executing_eagerly():
            raise ValueError(
                "ScaleCom for TensorFlow builds graph ops and keys each gradient by its graph "
                "name; use it through hvd.DistributedGradientTape, the Keras "
                "DistributedOptimizer or inside tf.function, not on an eager tensor")
        call = horovod_call()
        if call is not None:
            check_call(call, hvd, self.process_set)
        self._check_config()
        numel = tensor.shape.num_elements()
        # The incoming gradient belongs to the graph that holds all of them;
        # ops made here (the clipping) land in Horovod's per-tensor cond branch.
        offset = self._registry.next_index(tensor.graph)
        tensor = self._clip_norm(tensor)
        key = self._key_of(offset, tensor.shape)
        if self._always_dense(tensor):
            return tensor, None
        entry = self._prepare(key, tensor.name, numel, offset)
        memory, step = self.memory[key], self.steps[key]
        size, rank = world(self.process_set)

        t = step.read_value()
        dense = tf.reduce_any([tf.logical_not(self.enabled.read_value()),
                               t < self.config.warmup_steps, tf.equal(size, 1)])
        lead = tf.cast(tf.math.floormod(t + entry.offset, tf.cast(size, tf.int64)), tf.int32)
        grad = tf.reshape(tf.cast(tensor, tf.float32), [-1])

        nonfinite = self.nonfinite[key]
        watch = self.watch[key]

        def dense_branch():
            with tf.control_dependencies([nonfinite.assign(0)]):
                return tf.identity(grad), tf.zeros([entry.k], tf.int32)

        def compressed_branch():
            clipped, watching = watch.clip(grad, t, self.config.clip_factor_or_zero)
            mine = tf.cond(tf.equal(lead, rank),
                           lambda: ops.scalecom_select_topk(memory, clipped, k=entry.k),
                           lambda: tf.zeros([0], tf.int32))
            indices = share_indices(mine, entry, self.process_set)
            values, new_memory, kept = ops.scalecom_gather_update(
                memory, clipped, indices, beta=float(self.config.beta))
            updates = [memory.assign(new_memory), nonfinite.assign(tf.cast(kept, tf.int64)),
                       *watching, watch.memory(kept, t)]
            with tf.control_dependencies(updates):
                return tf.identity(values), indices

        payload, indices = tf.cond(dense, dense_branch, compressed_branch)
        with tf.control_dependencies([payload]):
            step.assign_add(1)
        return payload, _Ctx(entry, dense, indices, t, tensor.shape, tensor.dtype)

    def _clip_norm(self, tensor: tf.Tensor) -> tf.Tensor:
        """This worker's gradient scaled to norm <= clip_norm (unchanged without
        it), whether it goes dense or not: the rule is per gradient."""
        if self.config.clip_norm is None or not tensor.dtype.is_floating:
            return tensor
        norm = tf.norm(tf.cast(tensor, tf.float32))
        scale = tf.minimum(1.0, self.config.clip_norm / (norm + CLIP_NORM_EPS))
        return tensor * tf.cast(scale, tensor.dtype)

    def decompress(self, tensor: tf.Tensor, ctx: _Ctx | None) -> tf.Tensor:
        if ctx is None:
            return tensor
        numel = ctx.entry.numel

        def dense():
            return tensor

        def sparse():
            with tf.control_dependencies([self.watch[ctx.entry.key].exchange(tensor, ctx.step)]):
                return ops.scalecom_scatter(ctx.indices, tensor, numel=numel)

        out = tf.cond(ctx.dense, dense, sparse)
        return tf.cast(tf.reshape(out, ctx.shape), ctx.dtype)

    # -- figures ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Each tensor's last exchange and the totals, under the keys of every
        frontend (horovod_scalecom.stats): bytes by the byte model of
        docs/algorithm.md, memory entries that refused a NaN/Inf update, the relative
        clip's norm and scale (``clipped`` counts the tensors it scaled down),
        the divergence guard's events. The timings are None: the exchange
        runs as graph ops.

        A record's ``k`` and ``leader`` are None where that exchange went
        dense (warm-up, ``enabled`` False, one rank). Only the gradients
        ScaleCom may compress have records: those below ``min_numel`` or of
        another dtype are Horovod's plain allreduce, whatever the step. Under
        the ScaleCom ring the records have no leader (each chunk's owner
        selects) and ``bytes_sent`` follows the ring's byte model; the
        engine's own count is the ring's stats()["ring_bytes"].
        """
        size = self.process_set.size()
        ring = self._in_ring
        records = {}
        for key, entry in self._registry.entries.items():
            step = int(self.steps[key].numpy()) - 1          # the last exchange
            # Only a compressed exchange runs the relative clip (it keeps its step).
            norm, scale = self.watch[key].last_clip(step)
            compressed = step >= 0 and norm is not None
            # The ring has no leader (each chunk's owner selects) and its own bytes.
            leader = (step + entry.offset) % size if compressed and not ring else None
            ring_bytes = {"bytes_sent": bytes_model.ring(entry.k, size)} if compressed and ring else {}
            records[key] = new_record(
                entry.numel, entry.k if compressed else None, leader, step, size, timed=False,
                nonfinite_kept=int(self.nonfinite[key].numpy()), grad_norm=norm,
                clip_scale=scale, **ring_bytes)
        return last_step(records, divergence(self.watch),
                         RING_INDEX_SHARE if ring else INDEX_SHARE)

    def _check_config(self) -> None:
        """Once, when the first exchange is traced: every rank must run ScaleCom
        with the same knobs. A different ratio would pair index sets of
        different sizes (Horovod's shape error, far from the cause); a
        different beta, warm-up or clip_norm would train on silently; caught
        here, on every rank, with each rank's values. Runs eagerly
        (tf.init_scope) while the step is traced, which every rank does at the
        same point of its first step."""
        if os.environ.get("HOROVOD_ELASTIC") == "1" and not self._held_by_state:
            # When a step is traced; the State's sync (world_changed) runs first
            # thing in hvd.elastic.run.
            raise unheld_error("horovod_scalecom.tensorflow.elastic.TensorFlowKerasState")
        if self._config_checked or self.process_set.size() == 1:
            return
        self._config_checked = True
        with tf.init_scope():
            check_agreement(self.config, self.process_set)

    # -- Horovod Elastic ----------------------------------------------------------------

    def snapshot(self) -> dict[Any, tf.Tensor]:
        """A copy of this rank's variables (memory, step counters, clip levels and
        guard records, the enabled flag): what an Elastic commit saves."""
        return {v.ref(): tf.identity(v) for v in self.variables}

    def restore(self, snapshot: dict[Any, tf.Tensor]) -> None:
        """Back to ``snapshot``; variables made since (a gradient first traced
        after it) go back to the values they were made with."""
        for v in self.variables:
            saved = snapshot.get(v.ref())
            v.assign(self._registry.initial[v.ref()] if saved is None else saved)

    def world_changed(self) -> None:
        """Horovod Elastic changed the world: collective, eager, on every rank
        of the new world after Horovod's reset. The configuration check runs
        in the new world, and every rank takes rank 0's step counters, so all
        pick the same leader for every gradient (a rank that joins takes them
        for the gradients it has yet to trace). The memory stays this
        process's own: a joining rank starts from an empty one. The size and
        rank of a traced step are read when it runs, so nothing is retraced."""
        if self.process_set.process_set_id != 0:
            raise ValueError("ScaleCom under Horovod Elastic runs over every rank; "
                             "process sets are not supported there")
        self._held_by_state = True
        self._config_checked = False
        mine = {key: int(v.numpy()) for key, v in self.steps.items()}
        steps = hvd.broadcast_object(mine, root_rank=0, name="scalecom_elastic_steps")
        self._registry.initial_steps = steps
        for key, step in steps.items():
            if key in self.steps:
                self.steps[key].assign(step)
        self._check_config()

    # -- the gradients, for compress and the ring (horovod_scalecom.tensorflow.ring_tape) ----

    def _always_dense(self, tensor: tf.Tensor) -> bool:
        """ScaleComConfig.always_dense: tensors of unknown size, below
        ``min_numel`` or of a dtype other than float32, float16 and bfloat16
        are never compressed (warm-up steps and ``enabled`` decide the others'
        steps when the graph runs)."""
        return self.config.always_dense(tensor.shape.num_elements(), tensor.dtype)

    def _key_of(self, offset: int, shape: tf.TensorShape) -> str:
        """The key of the gradient at position ``offset`` of the variable list,
        of this shape, remembered; a position seen with another shape raises."""
        return self._registry.record(offset, shape)

    def _prepare(self, key: str, tensor_name: str, numel: int, offset: int) -> TensorEntry:
        """The gradient's entry; the first time, its numel is checked and its
        variables (memory, step counter, guard) are made, outside any trace.
        ``tensor_name`` names it in errors."""
        entries = self._registry.entries
        if key not in entries:
            check_numel(numel, tensor_name)
            op_name = f"scalecom_{offset}"
            entries[key] = TensorEntry(key, op_name, offset if self.config.stagger_leaders else 0,
                                       numel, self.config.k(numel))
            with tf.init_scope():
                var_name = re.sub(r"[^A-Za-z0-9_.\-]", "_", key)
                self.memory[key] = tf.Variable(tf.zeros([numel], tf.float32), trainable=False,
                                               name=f"memory_{var_name}")
                step = self._registry.initial_steps.get(key, 0)
                self.steps[key] = tf.Variable(tf.constant(step, tf.int64), trainable=False,
                                              name=f"step_{var_name}")
                self.nonfinite[key] = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                                  name=f"nonfinite_{var_name}")
                self.watch[key] = Watch(f"watch_{var_name}", tensor_name)
                # What restore() goes back to for a variable made after a snapshot
                # (an eager variable keeps no initial_value).
                for v in (self.memory[key], self.steps[key], self.nonfinite[key],
                          *self.watch[key].variables):
                    self._registry.initial[v.ref()] = tf.identity(v)
        return entries[key]

    def tensors(self) -> list[dict[str, Any]]:
        """The compressed gradients seen so far, in registration order."""
        return [{"key": e.key, "offset": self._registry.offsets[e.key], "numel": e.numel,
                 "k": e.k} for e in sorted(self._registry.entries.values(),
                                           key=lambda e: self._registry.offsets[e.key])]
