"""The relative clip and the divergence guard as TensorFlow graph ops.

The same rules as horovod_scalecom.reference.clip and horovod_scalecom.guard
(the clip is the C++ core's op, so its numbers are the torch frontend's):
per gradient, this rank's norm level is a float64 variable; the guard keeps
the first event (step, kind, value, level) and a count in variables, prints
a warning to stderr from the graph when the first event happens, and
``ScaleCom.stats()`` turns them into the torch frontend's
``stats()["divergence"]`` and a Python RuntimeWarning.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import tensorflow as tf
import horovod.tensorflow as hvd

from horovod_scalecom.config import CLIP_RHO
from horovod_scalecom.guard import KINDS, LEVEL_RHO, SPIKE_FACTOR, Event, describe
from horovod_scalecom.tensorflow._ops import ops

_NONFINITE_GRADIENT, _SPIKE, _NONFINITE_MEMORY, _NONFINITE_EXCHANGE, _EXCHANGE_SPIKE = 1, 2, 3, 4, 5


class Watch(tf.Module):
    """One gradient's clip level and guard record."""

    def __init__(self, name: str, tensor: str) -> None:
        super().__init__(name=name)
        self.tensor = tensor
        self.level = tf.Variable(tf.constant(math.nan, tf.float64), trainable=False, name="level")
        self.exchange_level = tf.Variable(tf.constant(math.nan, tf.float64), trainable=False,
                                          name="exchange_level")
        # step, kind (1-based index of guard.KINDS), value, level; step -1: no event yet
        self.first = tf.Variable(tf.constant([-1.0, 0.0, 0.0, 0.0], tf.float64),
                                 trainable=False, name="first_event")
        self.events = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="events")
        self.warned = False

    def clip(self, grad: tf.Tensor, step: tf.Tensor, factor: float) -> tuple[tf.Tensor, list]:
        """grad (flat float32) clipped, and the ops that advance the level and
        report a non-finite or spiking norm."""
        before = self.level.read_value()
        clipped, level, norm = ops.scalecom_relative_clip(
            grad, before, tf.constant(factor, tf.float64), tf.constant(CLIP_RHO, tf.float64))
        nonfinite = tf.logical_not(tf.math.is_finite(norm))
        spike = tf.logical_and(before > 0, norm > SPIKE_FACTOR * before)
        kind = tf.where(nonfinite, _NONFINITE_GRADIENT, tf.where(spike, _SPIKE, 0))
        return clipped, [self.level.assign(level), self.report(kind, step, norm, before)]

    def memory(self, refused: tf.Tensor, step: tf.Tensor) -> tf.Operation:
        kind = tf.where(refused > 0, _NONFINITE_MEMORY, 0)
        return self.report(kind, step, tf.cast(refused, tf.float64), tf.constant(math.nan, tf.float64))

    def exchange(self, values: tf.Tensor, step: tf.Tensor) -> tf.Operation:
        """The averaged values' norm against its running level (horovod_scalecom.guard)."""
        norm = tf.norm(tf.cast(values, tf.float64))
        level = self.exchange_level.read_value()
        finite = tf.math.is_finite(norm)
        spike = tf.logical_and(level > 0, norm > SPIKE_FACTOR * level)
        kind = tf.where(finite, tf.where(spike, _EXCHANGE_SPIKE, 0), _NONFINITE_EXCHANGE)
        updated = tf.where(level > 0, LEVEL_RHO * level + (1 - LEVEL_RHO) * norm, norm)
        new_level = tf.where(tf.logical_and(finite, norm > 0), updated, level)
        return tf.group(self.report(kind, step, norm, level), self.exchange_level.assign(new_level))

    def report(self, kind, step, value, level) -> tf.Operation:
        happened = kind > 0
        new = tf.logical_and(happened, self.first[0] < 0)
        row = tf.stack([tf.cast(step, tf.float64), tf.cast(kind, tf.float64),
                        tf.cast(value, tf.float64), tf.cast(level, tf.float64)])

        def say():
            text = tf.gather(tf.constant(KINDS), tf.maximum(kind - 1, 0))
            printed = tf.print("ScaleCom warning:", self.tensor, "at step", step, "on rank",
                               hvd.rank(), ":", text, "(norm", value, "level", level,
                               "). The run is diverging; see stats()['divergence'].",
                               output_stream=sys.stderr)
            with tf.control_dependencies([printed]):
                return tf.constant(True)

        told = tf.cond(new, say, lambda: tf.constant(False))
        return tf.group(self.events.assign_add(tf.cast(happened, tf.int64)),
                        self.first.assign(tf.where(new, row, self.first)), told)

    def event(self, rank: int) -> Event | None:
        step, kind, value, level = self.first.numpy().tolist()
        if step < 0:
            return None
        return Event(self.tensor, int(step), KINDS[int(kind) - 1], rank, value, level)


def divergence(watches: dict[str, Watch]) -> dict[str, Any]:
    """The guard's figures over every gradient, as horovod_scalecom.guard's
    stats(); each first event not yet warned about becomes a RuntimeWarning."""
    first = []
    for watch in watches.values():
        event = watch.event(hvd.rank())
        if event is None:
            continue
        first.append(vars(event).copy())
        if not watch.warned:
            watch.warned = True
            warnings.warn(describe(event), RuntimeWarning, stacklevel=3)
    return {"events": int(sum(int(w.events.numpy()) for w in watches.values())), "first": first}
