"""ScaleCom under Horovod Elastic (TensorFlow/Keras): the memory follows the State.

Use this TensorFlowKerasState in place of ``hvd.elastic.TensorFlowKerasState``
(Keras: ``KerasState``, which passes Keras's backend, as Horovod's) and hand it the
compression; Horovod's Keras elastic callbacks work with it as they are::

    compression = ScaleCom(ratio=0.01)
    model.compile(optimizer=hvd.DistributedOptimizer(opt, compression=compression), ...)
    state = TensorFlowKerasState(model, scalecom=compression, batch=0, epoch=0)

    @hvd.elastic.run
    def train(state):
        model.fit(..., callbacks=[hvd.elastic.CommitStateCallback(state), ...])

What happens to ScaleCom at each of Horovod's events:

- ``commit()`` saves this rank's ScaleCom variables (memory, step counters,
  clip levels) beside the model and optimizer;
- ``restore()`` (after a failed collective) brings back those of the last
  commit, the ones that belong to the restored model;
- ``sync()`` (after a reset that adds workers or follows a failure, on
  every rank of the new world; Horovod skips it when workers were only
  removed, and the survivors then need nothing new) runs
  ``ScaleCom.world_changed()``: the configuration check in the new world and
  rank 0's step counters for everybody, so the leaders agree. A joining rank
  starts from an empty memory; a rank that leaves takes its memory, the
  residue it had not sent yet, with it. No memory is ever broadcast.

A traced train step needs no retrace: ScaleCom reads the world's size and
its rank when the step runs, as Horovod's own ops do.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from horovod.tensorflow.elastic import TensorFlowKerasState as HorovodKerasState

from horovod_scalecom.tensorflow.compression import ScaleCom

__all__ = ["TensorFlowKerasState", "KerasState"]


class TensorFlowKerasState(HorovodKerasState):
    """``hvd.elastic.TensorFlowKerasState`` that also carries a ScaleCom.

    Args:
        model, optimizer, backend, kwargs: as for Horovod's State.
        scalecom: the ScaleCom given to the DistributedOptimizer or
            DistributedGradientTape as its compression.
    """

    def __init__(self, model: Any, optimizer: Any = None, backend: Any = None, *,
                 scalecom: ScaleCom, **kwargs: Any) -> None:
        if not isinstance(scalecom, ScaleCom):
            raise TypeError("scalecom must be the horovod_scalecom.tensorflow.ScaleCom given "
                            "to the DistributedOptimizer or DistributedGradientTape, got "
                            f"{type(scalecom).__name__}")
        self.scalecom = scalecom
        self._scalecom_saved = scalecom.snapshot()
        super().__init__(model, optimizer=optimizer, backend=backend, **kwargs)

    def save(self) -> None:
        self._scalecom_saved = self.scalecom.snapshot()
        super().save()

    def restore(self) -> None:
        self.scalecom.restore(self._scalecom_saved)
        super().restore()

    def sync(self) -> None:
        super().sync()
        self.scalecom.world_changed()
        self._scalecom_saved = self.scalecom.snapshot()


class KerasState(TensorFlowKerasState):
    """``hvd.elastic.KerasState`` (horovod.tensorflow.keras) with a ScaleCom."""

    def __init__(self, model: Any, optimizer: Any = None, *, scalecom: ScaleCom,
                 **kwargs: Any) -> None:
        super().__init__(model, optimizer=optimizer, backend=tf.keras.backend,
                         scalecom=scalecom, **kwargs)
