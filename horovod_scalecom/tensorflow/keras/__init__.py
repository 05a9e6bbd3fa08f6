"""Keras helpers for ScaleCom (horovod.tensorflow.keras)."""

from horovod_scalecom.tensorflow.keras.callback import ScaleComCallback

__all__ = ["ScaleComCallback"]
