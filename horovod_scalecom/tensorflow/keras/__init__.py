"""Keras helpers for ScaleCom (horovod.tensorflow.keras): the callback and the ring's optimizers."""

from horovod_scalecom.tensorflow.keras.callback import ScaleComCallback
from horovod_scalecom.tensorflow.keras.ring_optimizer import (
    DistributedOptimizer, PartialDistributedOptimizer)

__all__ = ["ScaleComCallback", "DistributedOptimizer", "PartialDistributedOptimizer"]
