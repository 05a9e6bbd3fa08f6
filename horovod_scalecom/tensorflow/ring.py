"""The compressed ring allreduce (horovod_scalecom._ring) for TensorFlow,
behind a DistributedGradientTape and, in .keras, a DistributedOptimizer.

All compressible gradients of a step travel in one fused ring exchange, run
through ``tf.numpy_function`` so that it works in eager code and inside
tf.function alike; the others go through Horovod's allreduce. The memory and
step counters are the ScaleCom object's variables (keyed by the gradient's
position in the list and its shape), so ``tf.train.Checkpoint(scalecom=...)``
saves the ring's state as well. The gradients exchanged together share their
step counter, so warm-up switches the whole group between Horovod's dense
allreduce and the ring. The ScaleCom's knobs are the ring's: its
``share_timeout`` bounds each wait for the other ranks.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd

from horovod_scalecom.ring import refuse_without_mpi
from horovod_scalecom.tensorflow.compression import ScaleCom


# The arguments of Horovod 0.28.1's DistributedGradientTape and Keras
# DistributedOptimizer (beyond the compression).
HOROVOD_ARGUMENTS = frozenset((
    "device_dense", "device_sparse", "sparse_as_dense", "op", "gradient_predivide_factor",
    "num_groups", "groups", "process_set", "scale_local_gradients", "name",
    "backward_passes_per_step", "average_aggregated_gradients"))


def refuse_unknown(ours: str, given: dict[str, Any], known: frozenset = frozenset()) -> None:
    """A keyword outside ``known`` is refused as Python would, except
    ``timeout=``, which the ring's wrappers took before the ScaleCom held
    every knob: it is refused with where it went (silently dropped, a
    caller's shorter timeout would leave a stalled job hanging for the
    default)."""
    if "timeout" in given:
        raise TypeError(f"{ours} does not take timeout: the ring waits the ScaleCom's "
                        "share_timeout for the other ranks; pass "
                        "compression=ScaleCom(share_timeout=...) instead")
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{ours} got an unexpected keyword argument {unknown[0]!r}")


def refuse_horovod_arguments(ours: str, horovods: str, given: dict[str, Any]) -> None:
    """The ring takes none of Horovod's wrapper arguments: each is refused by
    name, with the wrapper that does take it; anything else as by
    refuse_unknown."""
    refuse_unknown(ours, given, HOROVOD_ARGUMENTS)
    if given:
        names = ", ".join(sorted(given))
        raise TypeError(f"{ours} does not take {names}: the ring averages over every rank "
                        f"and runs no Horovod allreduce for them. Use {horovods}(..., {names}, "
                        "compression=ScaleCom(...)) for those.")


class RingExchange:
    """Averages a list of gradients: the compressible ones through the ring,
    each wait for the other ranks bounded by ``compression.share_timeout``."""

    def __init__(self, compression: ScaleCom, **unexpected: Any) -> None:
        refuse_unknown("horovod_scalecom.tensorflow.ring.RingExchange", unexpected)
        if not isinstance(compression, ScaleCom):
            raise TypeError("the ScaleCom ring needs compression=horovod_scalecom.tensorflow."
                            "ScaleCom(...)")
        if compression.process_set.process_set_id != 0:
            raise ValueError("horovod_scalecom.tensorflow.DistributedGradientTape runs its ring "
                             "over every rank; for a process set use "
                             "hvd.DistributedGradientTape(..., process_set=ps) with "
                             "compression=ScaleCom(process_set=ps)")
        refuse_without_mpi("horovod_scalecom.tensorflow.DistributedGradientTape",
                           "hvd.DistributedGradientTape", hvd.size(), hvd.mpi_enabled())
        self.compression = compression
        compression.use_in_ring()
        self.last_bytes = 0
        self.last_nonfinite = 0     # memory entries that refused a NaN/Inf update, last step

    def stats(self) -> dict:
        """The last exchange: bytes this rank sent in the ring (the engine's
        count) and memory entries that refused a NaN/Inf update."""
        return {"ring_bytes": int(self.last_bytes), "nonfinite_kept": int(self.last_nonfinite),
                "divergence": self.compression.stats()["divergence"]}

    def _exchange(self, step, *arrays):
        # Runs in Python (tf.numpy_function).
        engine = self.compression.ring_engine()
        count = len(arrays) // 2
        memories = [np.array(a, dtype=np.float32, copy=True).reshape(-1) for a in arrays[:count]]
        grads = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in arrays[count:]]
        outs = [np.empty_like(g) for g in grads]
        cfg = self.compression.config
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
        engine.start(memories, grads, outs, [int(step)] * count, float(cfg.ratio),
                     float(cfg.beta), threads)
        try:
            self.last_bytes = engine.wait(self.compression.share_timeout)
        except TimeoutError as exc:
            raise RuntimeError(f"ScaleCom ring on rank {hvd.rank()}: {exc}") from exc
        self.last_nonfinite = engine.last_nonfinite()
        return memories + outs

    def _dense_or_ring(self, grads: Sequence[tf.Tensor | None]) -> tuple[list, list]:
        """The gradients never compressed, averaged by Horovod's allreduce in
        place in the returned list; the others as (position, gradient,
        entry), for the ring."""
        compression = self.compression
        out: list[tf.Tensor | None] = list(grads)
        ring = []
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                grad = tf.convert_to_tensor(grad)
            grad = compression.clip(grad)
            if hvd.size() == 1 or compression.always_dense(grad):
                out[i] = hvd.allreduce(grad, op=hvd.Average, name=f"scalecom_dense_{i}")
                continue
            key = compression.key_of(i, grad.shape)
            entry = compression.prepare(key, grad.name if hasattr(grad, "name") else key,
                                        grad.shape.num_elements(), i)
            ring.append((i, grad, entry))
        return out, ring

    def allreduce(self, grads: Sequence[tf.Tensor | None],
                  variables: Sequence[tf.Variable] | None = None) -> list[tf.Tensor | None]:
        compression, cfg = self.compression, self.compression.config
        compression.check_config()
        out, ring = self._dense_or_ring(grads)
        if not ring:
            return out

        first_step = compression.steps[ring[0][2].key]
        step = first_step.read_value()
        warm = tf.logical_or(tf.logical_not(compression.enabled.read_value()),
                             step < cfg.warmup_steps)
        memories = [compression.memory[e.key] for _, _, e in ring]

        def dense():
            return [hvd.allreduce(tf.cast(g, tf.float32), op=hvd.Average,
                                  name=f"scalecom_warm_{i}") for i, g, _ in ring]

        def compressed():
            flat, watching = [], []
            for _, g, e in ring:   # ScaleCom's relative clip, as in the compressor
                clipped, clip_ops = compression.watch[e.key].clip(
                    tf.reshape(tf.cast(g, tf.float32), [-1]), step, cfg.clip_factor_or_zero)
                flat.append(clipped)
                watching += clip_ops
            results = tf.numpy_function(self._exchange, [step] + [m.read_value() for m in memories]
                                        + flat, [tf.float32] * (2 * len(ring)), stateful=True)
            means = results[len(ring):]
            updates = [m.assign(tf.reshape(r, [-1])) for m, r in zip(memories, results[:len(ring)])]
            updates += [compression.watch[e.key].exchange(r, step) for (_, _, e), r in zip(ring, means)]
            with tf.control_dependencies(updates + watching):
                return [tf.identity(r) for r in means]

        averaged = tf.cond(warm, dense, compressed)
        with tf.control_dependencies(averaged):
            for _, _, e in ring:
                compression.steps[e.key].assign_add(1)
        for (i, g, _), a in zip(ring, averaged):
            out[i] = tf.cast(tf.reshape(a, g.shape), g.dtype)
        return out


class DistributedGradientTape(tf.GradientTape):
    """``hvd.DistributedGradientTape`` whose compressible gradients go through
    ScaleCom's compressed ring allreduce:

        tape = horovod_scalecom.tensorflow.DistributedGradientTape(
            tape, compression=ScaleCom(ratio=0.01))
        grads = tape.gradient(loss, model.trainable_variables)

    Every knob is the ScaleCom's, ``share_timeout`` (the ring's wait for the
    other ranks) included; Horovod's wrapper arguments are refused by name.
    """

    def __init__(self, gradtape: tf.GradientTape, compression: ScaleCom,
                 **horovod_arguments: Any) -> None:
        refuse_horovod_arguments("horovod_scalecom.tensorflow.DistributedGradientTape",
                                 "hvd.DistributedGradientTape", horovod_arguments)
        super().__init__(gradtape._persistent, gradtape._watch_accessed_variables)
        self._tape = gradtape._tape
        self._recording = gradtape._recording
        self._exchange = RingExchange(compression)

    @property
    def exchange(self) -> RingExchange:
        """The ring exchange behind this tape; ``tape.exchange.stats()``."""
        return self._exchange

    def gradient(self, target, sources, output_gradients=None, **kwargs):
        grads = super().gradient(target, sources, output_gradients, **kwargs)
        flat_sources = tf.nest.flatten(sources)
        flat = self._exchange.allreduce(tf.nest.flatten(grads), flat_sources)
        return tf.nest.pack_sequence_as(grads, flat)
