"""ScaleCom under Horovod Elastic (PyTorch): the memory follows the State.

Use this TorchState in place of ``hvd.elastic.TorchState`` and hand it the
compression::

    compression = ScaleCom(model, ratio=0.01)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=...,
                                         compression=compression)
    state = TorchState(model=model, optimizer=optimizer, scalecom=compression, batch=0)

    @hvd.elastic.run
    def train(state): ...

What happens to ScaleCom at each of Horovod's events:

- ``commit()`` saves this rank's memory, step counters and clip levels beside
  the model and optimizer (a copy in host or device memory, like theirs);
- ``restore()`` (after a failed collective) brings back the memory of the
  last commit, the one that belongs to the restored model;
- ``sync()`` (after a reset that adds workers or follows a failure, on
  every rank of the new world; Horovod skips it when workers were only
  removed, and the survivors then need nothing new) runs
  ``ScaleCom.world_changed()``: the configuration check in the new world and
  rank 0's step counters for everybody, so the leaders agree. A joining rank
  starts from an empty memory; a rank that leaves takes its memory, the
  residue it had not sent yet, with it. No memory is ever broadcast: it is
  each rank's own error, and rank 0's copied everywhere would be sent n times.
"""

from __future__ import annotations

from typing import Any

import torch
from horovod.torch.elastic.state import StateHandler
from horovod.torch.elastic.state import TorchState as HorovodTorchState

from horovod_scalecom.horovod_internals import add_state_handler, require
from horovod_scalecom.torch.horovod_path import ScaleCom

require("torch")   # TorchState's _handlers

__all__ = ["TorchState"]


class _ScaleComStateHandler(StateHandler):
    """Horovod's per-object handler (save / restore / sync) for a ScaleCom."""

    def __init__(self, scalecom: ScaleCom) -> None:
        super().__init__(scalecom)
        self._saved = scalecom.state_dict()

    def save(self) -> None:
        self._saved = self.value.state_dict()

    def restore(self) -> None:
        # Horovod is shut down here, and this process's rank is yet to be decided.
        self.value.load_state_dict(self._saved, same_world=False)

    def sync(self) -> None:
        self.value.world_changed()
        self._saved = self.value.state_dict()


class TorchState(HorovodTorchState):
    """``hvd.elastic.TorchState`` that also carries a ScaleCom compression.

    Args:
        model, optimizer, kwargs: as for ``hvd.elastic.TorchState``.
        scalecom: the ScaleCom given to ``hvd.DistributedOptimizer`` as its
            compression; its memory is saved, restored and re-synchronised
            with the model (see the module's docstring).
    """

    def __init__(self, model: torch.nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, *,
                 scalecom: ScaleCom, **kwargs: Any) -> None:
        if not isinstance(scalecom, ScaleCom):
            raise TypeError("scalecom must be the horovod_scalecom.torch.ScaleCom given to "
                            f"hvd.DistributedOptimizer, got {type(scalecom).__name__}")
        super().__init__(model=model, optimizer=optimizer, **kwargs)
        add_state_handler(self, "scalecom", _ScaleComStateHandler(scalecom))
        self.scalecom = scalecom
