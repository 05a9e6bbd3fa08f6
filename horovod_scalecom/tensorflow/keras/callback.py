"""ScaleComCallback: compression warm-up and compression figures in Keras logs."""

from __future__ import annotations

import tensorflow as tf

from horovod_scalecom.tensorflow.compression import ScaleCom


class ScaleComCallback(tf.keras.callbacks.Callback):
    """Dense for the first epochs or steps of ``fit``, compressed afterwards,
    and each epoch's compression figures in the logs.

    The switch flips ``compression.enabled``, a variable the traced step
    reads, so nothing is retraced. Every epoch the logs (progress bar,
    History, TensorBoard) get:

    * ``scalecom_ratio``: dense bytes / bytes sent over the epoch's steps, for
      the tensors ScaleCom handles (1.0 while dense);
    * ``scalecom_mb_per_step``: megabytes each rank sent per step for them, by
      the byte model of docs/algorithm.md.

    Args:
        compression: the ScaleCom given to hvd.DistributedOptimizer.
        warmup_epochs: dense epochs at the start of fit.
        warmup_steps: dense batches at the start of fit (counted across epochs).
    """

    def __init__(self, compression: ScaleCom, warmup_epochs: int = 0,
                 warmup_steps: int = 0) -> None:
        super().__init__()
        if not isinstance(compression, ScaleCom):
            raise TypeError(f"ScaleComCallback needs the ScaleCom instance given to the "
                            f"optimizer, got {type(compression).__name__}")
        for name, value in (("warmup_epochs", warmup_epochs), ("warmup_steps", warmup_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self.compression = compression
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self._epoch = 0
        self._batches = 0
        self._sent = self._dense = 0.0
        self._steps = 0

    def _update(self) -> None:
        on = self._epoch >= self.warmup_epochs and self._batches >= self.warmup_steps
        if bool(self.compression.enabled.numpy()) != on:
            self.compression.enabled.assign(on)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._sent = self._dense = 0.0
        self._steps = 0
        self._update()

    def on_train_batch_begin(self, batch, logs=None):
        self._update()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        stats = self.compression.stats()
        self._sent += stats["bytes_sent"]
        self._dense += stats["dense_bytes"]
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._steps:
            return
        logs["scalecom_ratio"] = self._dense / self._sent if self._sent else 1.0
        logs["scalecom_mb_per_step"] = self._sent / self._steps / 1e6
