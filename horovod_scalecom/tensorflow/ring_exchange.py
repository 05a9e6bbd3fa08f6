"""One step's gradients averaged over every rank, the compressible ones
through ScaleCom's compressed ring allreduce (horovod_scalecom._ring): the
exchange behind the TensorFlow ring's tape and Keras optimizer.

The ring's gradients travel in groups, one fused message per group and hop,
all queued on the engine at once and waited for together, through
``tf.numpy_function`` (eager code and tf.function alike). By default one
group holds them all; Horovod's ``groups``/``num_groups`` cut them as
Horovod cuts its grouped allreduces, the same on every rank. Grouping
changes how the bytes travel, never the numbers: each tensor's chunks,
selection and arithmetic are its own (docs/algorithm.md). The others go
through Horovod's allreduce: tensors ScaleCom never compresses, warm-up
steps, sparse gradients without ``sparse_as_dense`` (Horovod's sparse
allreduce, an allgather, uncompressed); gradients of local variables stay
on their rank.

The memory and step counters are the ScaleCom's variables (keyed by the
gradient's position in the list and its shape), so
``tf.train.Checkpoint(scalecom=...)`` saves the ring's state. The gradients
of a step share their step counter, so warm-up switches all of them between
Horovod's dense allreduce and the ring.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd

from horovod_scalecom.ring_buckets import explicit_groups, even_groups
from horovod_scalecom.tensorflow.compression import ScaleCom


def check_groups_value(ours: str, groups: Any) -> Any:
    """Horovod's ``groups``: None, a positive int, or a list of lists of
    tf.Variable; returned as None, the int, or lists of variable refs."""
    if groups is None:
        return None
    if isinstance(groups, int) and not isinstance(groups, bool):
        even_groups(1, groups)       # raises for a non-positive count
        return groups
    if isinstance(groups, (list, tuple)) and all(
            isinstance(g, (list, tuple)) and all(isinstance(v, tf.Variable) for v in g)
            for g in groups):
        refs = [[v.ref() for v in g] for g in groups]
        every = [r for g in refs for r in set(g)]
        if len(every) != len(set(every)):
            raise ValueError(f"{ours}: groups: a variable is in more than one group")
        return refs
    raise ValueError(f"{ours}: groups must be a positive integer or a list of lists of "
                     f"tf.Variable, got {groups!r}")


def source_ref(source: Any) -> Any:
    """A tape source's or an optimizer variable's hashable reference."""
    return source.ref() if hasattr(source, "ref") else None


class RingExchange:
    """Averages a list of gradients over every rank: the compressible ones
    through the ring, each wait for the other ranks bounded by
    ``compression.share_timeout``. The wrappers check their arguments
    (horovod_scalecom.ring_arguments) before they build it."""

    def __init__(self, compression: ScaleCom, ours: str, *, sparse_as_dense: bool = False,
                 groups: Any = None, device_dense: str = "", device_sparse: str = "",
                 scale_local_gradients: bool = True) -> None:
        self.compression = compression
        self.ours = ours
        self.sparse_as_dense = bool(sparse_as_dense)
        self.groups = check_groups_value(ours, groups)
        self.device = {"device_dense": device_dense, "device_sparse": device_sparse}
        self.scale_local_gradients = bool(scale_local_gradients)
        compression._use_in_ring()
        self.last_bytes = 0
        self.last_nonfinite = 0     # memory entries that refused a NaN/Inf update, last step
        self.last_groups = 0        # ring exchanges (fused messages) of the last step
        self._warned_sparse: set[int] = set()

    def stats(self) -> dict:
        """The last exchange: bytes this rank sent in the ring (the engine's
        count), the groups it went in, memory entries that refused a NaN/Inf
        update, and the divergence guard's record."""
        return {"ring_bytes": int(self.last_bytes), "ring_groups": int(self.last_groups),
                "nonfinite_kept": int(self.last_nonfinite),
                "divergence": self.compression.stats()["divergence"]}

    # -- which gradient goes where ------------------------------------------------------

    def local(self, grad: Any) -> Any:
        """A local variable's gradient: never exchanged; divided by the number
        of ranks with ``scale_local_gradients``, as Horovod does."""
        if not self.scale_local_gradients:
            return grad
        size = float(hvd.size())
        if isinstance(grad, tf.IndexedSlices):
            return tf.IndexedSlices(grad.values / size, grad.indices, grad.dense_shape)
        return grad / size

    def _sparse(self, i: int, grad: tf.IndexedSlices, variable: Any) -> Any:
        # Horovod's sparse allreduce (an allgather): ScaleCom never sees it.
        if i not in self._warned_sparse:
            self._warned_sparse.add(i)
            name = getattr(variable, "name", f"gradient {i}")
            warnings.warn(f"{self.ours}: the gradient of {name} is sparse (IndexedSlices); it "
                          "goes through Horovod's sparse allreduce, uncompressed. Pass "
                          "sparse_as_dense=True to compress it in the ring.", stacklevel=4)
        return hvd.allreduce(grad, op=hvd.Average, name=f"scalecom_sparse_{i}", **self.device)

    def _dense_or_ring(self, out: list, positions: list[int], variables: Sequence[Any]) -> list:
        """Averages in place in ``out`` the gradients at ``positions`` that do
        not go through the ring; returns the others as (position, gradient,
        entry)."""
        compression = self.compression
        ring = []
        for i in positions:
            grad = out[i]
            if isinstance(grad, tf.IndexedSlices):
                if not self.sparse_as_dense:
                    out[i] = self._sparse(i, grad, variables[i] if variables else None)
                    continue
                grad = tf.convert_to_tensor(grad)
            grad = compression._clip_norm(grad)
            if hvd.size() == 1 or compression._always_dense(grad):
                out[i] = hvd.allreduce(grad, op=hvd.Average, name=f"scalecom_dense_{i}",
                                       **self.device)
                continue
            key = compression._key_of(i, grad.shape)
            entry = compression._prepare(key, grad.name if hasattr(grad, "name") else key,
                                        grad.shape.num_elements(), i)
            ring.append((i, grad, entry))
        return ring

    def _group_sizes(self, positions: list[int], ring: list, variables: Sequence[Any]) -> list:
        """The ring's tensors (``ring``, in position order) cut into groups:
        how many of them each fused message holds, in the order they start.
        Horovod's groups are cut over every exchanged gradient (``positions``),
        dense ones included; a group left with none of the ring's is none."""
        if self.groups is None:
            return [len(ring)]
        if isinstance(self.groups, int):
            members = even_groups(len(positions), self.groups)
        else:
            place = {source_ref(variables[i]): j for j, i in enumerate(positions)}
            members = explicit_groups(len(positions), [
                [place[r] for r in group if r in place] for group in self.groups
                if any(r in place for r in group)])
        in_ring = {i for i, _, _ in ring}
        order = {i: n for n, (i, _, _) in enumerate(ring)}
        sizes, ordered = [], []
        for group in members:
            mine = [positions[j] for j in group if positions[j] in in_ring]
            if mine:
                sizes.append(len(mine))
                ordered += [order[i] for i in mine]
        ring[:] = [ring[n] for n in ordered]
        return sizes

    # -- the step ---------------------------------------------------------------------

    def allreduce(self, grads: Sequence[Any], variables: Sequence[Any] | None = None,
                  local: frozenset = frozenset()) -> list:
        """The averaged gradients, in the order given (None stays None).
        ``variables``: the gradients' variables or tape sources (for groups
        and names); ``local``: refs of those whose gradients stay local."""
        self.compression._check_config()
        variables = list(variables) if variables is not None else [None] * len(grads)
        out = list(grads)
        positions = []
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            if local and source_ref(variables[i]) in local:
                out[i] = self.local(grad)
                continue
            positions.append(i)
        ring = self._dense_or_ring(out, positions, variables)
        if ring:
            sizes = self._group_sizes(positions, ring, variables)
            for (i, g, _), averaged in zip(ring, self._ring(ring, sizes)):
                out[i] = tf.cast(tf.reshape(averaged, g.shape), g.dtype)
        return out

    def _ring(self, ring: list, sizes: list[int]) -> list:
        compression, cfg = self.compression, self.compression.config
        step = compression.steps[ring[0][2].key].read_value()
        warm = tf.logical_or(tf.logical_not(compression.enabled.read_value()),
                             step < cfg.warmup_steps)
        memories = [compression.memory[e.key] for _, _, e in ring]

        def dense():
            return [hvd.allreduce(tf.cast(g, tf.float32), op=hvd.Average,
                                  name=f"scalecom_warm_{i}", **self.device) for i, g, _ in ring]

        def compressed():
            flat, watching = [], []
            for _, g, e in ring:   # ScaleCom's relative clip, as in the compressor
                clipped, clip_ops = compression.watch[e.key].clip(
                    tf.reshape(tf.cast(g, tf.float32), [-1]), step, cfg.clip_factor_or_zero)
                flat.append(clipped)
                watching += clip_ops
            results = tf.numpy_function(
                lambda t, *arrays: self._exchange(sizes, t, *arrays),
                [step] + [m.read_value() for m in memories] + flat,
                [tf.float32] * (2 * len(ring)), stateful=True)
            means = results[len(ring):]
            updates = [m.assign(tf.reshape(r, [-1])) for m, r in zip(memories, results[:len(ring)])]
            updates += [compression.watch[e.key].exchange(r, step)
                        for (_, _, e), r in zip(ring, means)]
            with tf.control_dependencies(updates + watching):
                return [tf.identity(r) for r in means]

        averaged = tf.cond(warm, dense, compressed)
        with tf.control_dependencies(averaged):
            for _, _, e in ring:
                compression.steps[e.key].assign_add(1)
        return averaged

    def _exchange(self, sizes: list[int], step, *arrays):
        # Runs in Python (tf.numpy_function): every group queued, one wait.
        engine = self.compression._ring_engine()
        count = len(arrays) // 2
        memories = [np.array(a, dtype=np.float32, copy=True).reshape(-1) for a in arrays[:count]]
        grads = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in arrays[count:]]
        outs = [np.empty_like(g) for g in grads]
        cfg = self.compression.config
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
        begin = 0
        for size in sizes:
            end = begin + size
            engine.start(memories[begin:end], grads[begin:end], outs[begin:end],
                         [int(step)] * size, float(cfg.ratio), float(cfg.beta), threads)
            begin = end
        try:
            self.last_bytes = engine.wait(self.compression.share_timeout)
        except TimeoutError as exc:
            raise RuntimeError(f"ScaleCom ring on rank {hvd.rank()}: {exc}") from exc
        self.last_nonfinite = engine.last_nonfinite()
        self.last_groups = len(sizes)
        return memories + outs
