"""ScaleCom's DDP communication hook under PyTorch Lightning (``lightning.pytorch``).

    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from horovod_scalecom.torch.lightning import ScaleComCallback

    trainer = pl.Trainer(accelerator="cpu", devices=2,
                         strategy=DDPStrategy(process_group_backend="gloo"),
                         callbacks=[ScaleComCallback(ratio=0.01)])

The callback builds ``ScaleComHookState`` on the model Lightning's
DDPStrategy has wrapped in DistributedDataParallel, at the start of fitting
(the state is built from the DDP model, collectively), and registers
``scalecom_hook`` on it. Why not DDPStrategy's own ``ddp_comm_state`` /
``ddp_comm_hook``: the state needs the wrapped model, which does not exist
when the strategy is built, and Lightning 2.6 registers those hooks on CUDA
devices only (on the CPU it drops them without a word); the callback refuses
them, so the hook is never registered twice.

Checkpoints: Lightning writes them from rank 0 only, and the hook's state is
per rank. The callback's ``state_dict()`` (which Lightning calls on every
rank while saving) gathers every rank's hook state to rank 0, into the
checkpoint under the callback's key; resuming (``trainer.fit(...,
ckpt_path=...)``) hands each rank its own entry, and refuses, on every rank,
a checkpoint of another number of ranks or of other knobs.

Logging: after every batch that exchanged, the hook's figures
(horovod_scalecom.torch.ddp_frameworks.figures: bytes sent, dense bytes,
compression, k, leader, exchanges) are logged with ``LightningModule.log``
under ``scalecom/...``: they reach ``trainer.logged_metrics`` and the logger.

This module imports Lightning; nothing else in the package does.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from horovod_scalecom.config import DEFAULTS
from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook
from horovod_scalecom.torch.ddp_checks import model_and_module
from horovod_scalecom.torch.ddp_frameworks import (check_saved, figures, gather_states,
                                                   load_own_state)

__all__ = ["ScaleComCallback"]

PREFIX = "scalecom/"


class ScaleComCallback(pl.Callback):
    """ScaleCom's DDP hook on the model of a Lightning DDPStrategy, its
    per-rank state in Lightning's checkpoints, its figures in the logged
    metrics.

    Args: ScaleComHookState's knobs (``ratio``, ``beta``, ``warmup_steps``,
    ``min_numel``, ``clip_factor``, ``clip_norm``, ``share_timeout``), the
    same names and defaults; ``log_figures``: log the hook's figures after
    every batch that exchanged (default True); ``strict``: passed to the
    hook state's ``load_state_dict`` on resuming (False carries the memory
    over to other knobs).
    """

    def __init__(self, ratio: float = DEFAULTS.ratio, beta: float = DEFAULTS.beta,
                 warmup_steps: int = DEFAULTS.warmup_steps, min_numel: int = DEFAULTS.min_numel,
                 clip_factor: Optional[float] = DEFAULTS.clip_factor,
                 clip_norm: Optional[float] = DEFAULTS.clip_norm,
                 share_timeout: float = DEFAULTS.share_timeout,
                 log_figures: bool = True, strict: bool = True) -> None:
        self.knobs = dict(ratio=ratio, beta=beta, warmup_steps=warmup_steps,
                          min_numel=min_numel, clip_factor=clip_factor, clip_norm=clip_norm,
                          share_timeout=share_timeout)
        self.log_figures = log_figures
        self.strict = strict
        self.hook_state: Optional[ScaleComHookState] = None
        self._saved: Optional[dict[str, Any]] = None    # restored, loaded once the state exists
        self._logged = -1

    # -- the hook on the wrapped model ----------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the strategy wrapped the model: build the state (collective),
        load what a resumed checkpoint held for this rank, register the hook."""
        model = self._ddp_model(trainer)
        if self._saved is not None:
            # Before building anything: every rank reads the same checkpoint and raises alike.
            check_saved(self._saved, model.process_group.size())
        self.hook_state = ScaleComHookState(model, **self.knobs)
        if self._saved is not None:
            load_own_state(self.hook_state, self._saved, strict=self.strict)
            self._saved = None
        model.register_comm_hook(self.hook_state, scalecom_hook)
        self._logged = -1

    def _ddp_model(self, trainer: pl.Trainer) -> DistributedDataParallel:
        strategy = trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            raise TypeError(
                f"ScaleComCallback needs Lightning's DDPStrategy (strategy='ddp' or "
                f"DDPStrategy(...)); this Trainer runs {type(strategy).__name__}. ScaleCom is "
                "a DistributedDataParallel communication hook")
        given = [name for name in ("ddp_comm_state", "ddp_comm_hook", "ddp_comm_wrapper")
                 if getattr(strategy, f"_{name}", None) is not None]
        if given:
            raise ValueError(
                f"ScaleComCallback registers ScaleCom's hook itself; the DDPStrategy was also "
                f"given {', '.join(given)}. DDP takes one communication hook: build "
                "DDPStrategy without them and give ScaleCom's knobs to ScaleComCallback")
        ddp, _ = model_and_module(strategy.model)
        if ddp is None:
            raise TypeError(
                f"ScaleComCallback found a {type(strategy.model).__name__} where the "
                "DDPStrategy's DistributedDataParallel model should be: fit with a DDPStrategy "
                "that wraps the LightningModule in DDP")
        return ddp

    # -- figures --------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs the hook's figures once per exchange (a batch that only
        accumulated, under ``accumulate_grad_batches``, exchanged nothing)."""
        if not self.log_figures or self.hook_state is None:
            return
        values = figures(self.hook_state)
        if not values or values["exchanges"] == self._logged:
            return
        self._logged = values["exchanges"]
        for name, value in values.items():
            pl_module.log(PREFIX + name, value, on_step=True, on_epoch=False, batch_size=1)

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every rank's hook state, gathered to rank 0 (whose checkpoint
        Lightning writes). Lightning calls it on every rank while saving:
        it is collective. Empty before fitting built the state."""
        if self.hook_state is None:
            return {}
        return gather_states(self.hook_state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps the gathered states; each rank loads its own once fitting has
        built the hook's state (Lightning restores callbacks before it wraps
        the model)."""
        self._saved = dict(state_dict) if state_dict else None
