"""backward_passes_per_step for the TensorFlow ring's Keras optimizer: each
pass's gradients summed locally, the sum exchanged on the last pass of the
step, as Horovod's Keras optimizer does (its LocalGradientAggregationHelper).

Per step of ``passes`` passes: every pass adds its gradients to this
rank's sums (float variables, one per gradient position) and counts; the
last one hands the sums to the exchange (ScaleCom's memory and the ring see
the sum once per step, as in the PyTorch ring, where ``p.grad`` accumulates
the passes), divides the result by ``passes`` with
``average_aggregated_gradients``, and clears the sums. The optimizer applies
on that pass only (``ready()``); on the others it only counts its
``iterations``, as Horovod does.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from horovod_scalecom.ring_arguments import sparse_gradient_error


class LocalAggregation:
    """Sums ``passes`` backward passes per step on this rank; ``counter`` is
    the passes summed so far this step (Horovod's name: code that reads
    ``optimizer._agg_helper.counter`` reads this)."""

    def __init__(self, passes: int, average: bool, sparse_as_dense: bool, ours: str) -> None:
        self.passes = passes
        self.average = bool(average)
        self.sparse_as_dense = bool(sparse_as_dense)
        self.ours = ours
        with tf.init_scope():
            self.counter = tf.Variable(0, trainable=False, dtype=tf.int32,
                                       name="scalecom_aggregation_counter")
        self.sums: dict[int, tf.Variable] = {}

    def _sum(self, i: int, grad: Any, variable: Any) -> tf.Tensor:
        if isinstance(grad, tf.IndexedSlices):
            if not self.sparse_as_dense:
                # Horovod refuses this too: a sparse sum has no fixed shape.
                raise sparse_gradient_error(self.ours, getattr(variable, "name", f"gradient {i}"),
                                            " (backward_passes_per_step > 1 sums the passes "
                                            "in dense variables)")
            grad = tf.convert_to_tensor(grad)
        if i not in self.sums:
            with tf.init_scope():
                self.sums[i] = tf.Variable(tf.zeros(grad.shape, grad.dtype), trainable=False,
                                           name=f"scalecom_aggregated_{i}")
        total = self.sums[i]
        with tf.control_dependencies([total.assign_add(grad)]):
            return total.read_value()

    def gradients(self, grads: Sequence[Any], variables: Sequence[Any],
                  exchange: Callable[[list], list]) -> list:
        """This pass's gradients added to the sums; on the step's last pass the
        sums through ``exchange`` (divided by ``passes`` with averaging) and
        the sums cleared, on the others the sums as they stand. None stays None."""
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = [self._sum(i, grads[i], variables[i]) for i in present]
        with tf.control_dependencies(summed):
            count = self.counter.assign_add(1)

        def last_pass() -> list:
            full: list = [None] * len(grads)
            for i, s in zip(present, summed):
                full[i] = s
            reduced = exchange(full)
            out = [tf.convert_to_tensor(reduced[i]) for i in present]
            if self.average:
                out = [g / tf.cast(self.passes, g.dtype) for g in out]
            with tf.control_dependencies(out):
                clear = [self.counter.assign(0)] + [
                    self.sums[i].assign(tf.zeros_like(self.sums[i])) for i in present]
            with tf.control_dependencies(clear):
                return [tf.identity(g) for g in out]

        def other_pass() -> list:
            return [tf.identity(s) for s in summed]

        chosen = tf.cond(tf.equal(count, self.passes), last_pass, other_pass) if present else []
        result: list = [None] * len(grads)
        for i, g in zip(present, chosen):
            result[i] = g
        return result

    def ready(self) -> tf.Tensor:
        """Whether this pass ended a step (the optimizer applies then)."""
        return tf.equal(self.counter, 0)
