"""The relative clip and the divergence guard as TensorFlow graph ops.

The same rules as horovod_scalecom.reference.clip and horovod_scalecom.guard
(the clip is the C++ core's op, so its numbers are the torch frontend's):
per gradient, this rank's norm level is a float64 variable, and so are the
last clip's norm and scale (for ``stats()``, which reads variables: the step
runs as graph ops); the guard keeps the first event (step, kind, value,
level) and a count in variables, prints a warning to stderr from the graph
when the first event happens, and ``ScaleCom.stats()`` turns them into the
torch frontend's ``stats()["divergence"]`` and a Python RuntimeWarning.
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
    """One gradient's clip level, last clip and guard record."""

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
        # The last clip: the gradient's norm before it, the scale it applied
        # and the step it ran at. A dense exchange runs no clip, so a
        # clip_step behind the tensor's last exchange means that one went dense.
        self.grad_norm = tf.Variable(tf.constant(math.nan, tf.float64), trainable=False,
                                     name="grad_norm")
        self.clip_scale = tf.Variable(tf.constant(1.0, tf.float64), trainable=False,
                                      name="clip_scale")
        self.clip_step = tf.Variable(tf.constant(-1, tf.int64), trainable=False,
                                     name="clip_step")
        self.warned = False

    def clip(self, grad: tf.Tensor, step: tf.Tensor, factor: float) -> tuple[tf.Tensor, list]:
        """grad (flat float32) clipped, and the ops that advance the level,
        keep the clip's norm and scale, and report a non-finite or spiking norm."""
        before = self.level.read_value()
        clipped, level, norm = ops.scalecom_relative_clip(
            grad, before, tf.constant(factor, tf.float64), tf.constant(CLIP_RHO, tf.float64))
        nonfinite = tf.logical_not(tf.math.is_finite(norm))
        spike = tf.logical_and(before > 0, norm > SPIKE_FACTOR * before)
        kind = tf.where(nonfinite, _NONFINITE_GRADIENT, tf.where(spike, _SPIKE, 0))
        kept = [self.grad_norm.assign(norm),
                self.clip_scale.assign(applied_scale(norm, before, factor)),
                self.clip_step.assign(tf.cast(step, tf.int64))]
        return clipped, [self.level.assign(level), *kept, self.report(kind, step, norm, before)]

    def last_clip(self, step: int) -> tuple[float | None, float]:
        """(norm, scale) of the clip at exchange ``step``; (None, 1.0) when
        that exchange ran none (it went dense), as the torch records say."""
        if int(self.clip_step.numpy()) != step:
            return None, 1.0
        return float(self.grad_norm.numpy()), float(self.clip_scale.numpy())

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


def applied_scale(norm: tf.Tensor, before: tf.Tensor, factor: float) -> tf.Tensor:
    """The scale the relative clip applied, from the op's norm: the op does
    not return it, and the record must hold the float32 value that multiplied
    the gradient (csrc/core/clip.h: float32(limit / norm) where the clip fires,
    limit = factor * level; a NaN level, a non-finite or zero norm or factor 0
    leave the gradient alone), so the torch and NumPy figures match it bit for bit."""
    one = tf.constant(1.0, tf.float64)
    if factor <= 0.0:
        return one
    limit = tf.constant(factor, tf.float64) * before
    fires = tf.logical_and(tf.logical_and(before > 0, tf.math.is_finite(norm)), norm > limit)
    # The quotient only where the clip fires: elsewhere norm may be 0 or NaN.
    quotient = limit / tf.where(fires, norm, one)
    return tf.where(fires, tf.cast(tf.cast(quotient, tf.float32), tf.float64), one)


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
