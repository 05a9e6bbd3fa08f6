"""The ring for Keras: a DistributedOptimizer whose compressible gradients go
through ScaleCom's compressed ring allreduce (see horovod_scalecom.tensorflow.ring)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from horovod_scalecom.tensorflow.compression import ScaleCom
from horovod_scalecom.tensorflow.ring import RingExchange, refuse_horovod_arguments


def DistributedOptimizer(optimizer: tf.keras.optimizers.Optimizer, compression: ScaleCom,
                         **horovod_arguments: Any) -> tf.keras.optimizers.Optimizer:
    """Wraps a Keras optimizer like ``horovod.tensorflow.keras.DistributedOptimizer``,
    averaging gradients in ``apply_gradients`` with ScaleCom's compressed ring.

        opt = horovod_scalecom.tensorflow.keras.DistributedOptimizer(
            tf.keras.optimizers.SGD(0.1), compression=ScaleCom(ratio=0.01))
        model.compile(opt, ...)

    Every knob is the ScaleCom's, ``share_timeout`` (the ring's wait for the
    other ranks) included; Horovod's wrapper arguments are refused by name.
    """
    refuse_horovod_arguments("horovod_scalecom.tensorflow.keras.DistributedOptimizer",
                             "horovod.tensorflow.keras.DistributedOptimizer", horovod_arguments)
    exchange = RingExchange(compression)
    base = optimizer.__class__

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        grads_and_vars = list(grads_and_vars)
        variables = [v for _, v in grads_and_vars]
        grads = exchange.allreduce([g for g, _ in grads_and_vars], variables)
        return base.apply_gradients(self, zip(grads, variables), *args, **kwargs)

    cls = type(base.__name__, (base,), {"apply_gradients": apply_gradients,
                                        "scalecom_exchange": exchange})
    return cls.from_config(optimizer.get_config())
