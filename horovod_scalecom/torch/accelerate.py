"""ScaleCom's DDP communication hook under Hugging Face Accelerate.

    from accelerate import Accelerator
    from horovod_scalecom.torch.accelerate import register_scalecom

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)   # cpu=True: no GPU
    model, optimizer = accelerator.prepare(model, optimizer)             # model: DDP
    state = register_scalecom(accelerator, model, ratio=0.01)

launched with ``accelerate launch --multi_gpu --num_processes 2 train.py``
(on a machine without GPUs too: ``--multi_gpu`` is what makes accelerate
start the processes through torchrun, and ``Accelerator(cpu=True)`` makes
them one gloo group; ``accelerate launch --cpu --num_processes 2`` starts a
single process unless given an MPI hostfile). ``register_scalecom`` refuses
an Accelerator whose processes do not form one DDP group, naming what to
change, instead of letting each process train alone.

Gradient accumulation (``with accelerator.accumulate(model):``) runs the
accumulating micro-batches under DDP's ``no_sync()``: DDP calls no hook
there, and the accumulated gradient is one exchange at the synchronizing
step.

Checkpoints: ``accelerator.save_state()`` writes registered objects from the
main process only, and the hook's state is per rank. With
``checkpoint=True`` (the default) ``register_scalecom`` registers a
``ScaleComCheckpoint`` with ``accelerator.register_for_checkpointing``: it
gathers every rank's state into the main process's file, and
``accelerator.load_state()`` hands each rank its own (a checkpoint of
another number of ranks is refused on every rank).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook
from horovod_scalecom.torch.ddp_checks import model_and_module
from horovod_scalecom.torch.ddp_frameworks import gather_states, load_own_state

__all__ = ["register_scalecom", "ScaleComCheckpoint"]


class ScaleComCheckpoint:
    """The hook's per-rank state as one object for
    ``accelerator.register_for_checkpointing``: ``state_dict()`` gathers
    every rank's state to the first rank (collective; Accelerate calls it on
    every rank in ``save_state`` and writes the main process's), and
    ``load_state_dict()`` loads this rank's entry (collective, in
    ``load_state``)."""

    def __init__(self, state: ScaleComHookState, strict: bool = True) -> None:
        self.state = state
        self.strict = strict

    def state_dict(self) -> dict[str, Any]:
        return gather_states(self.state)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        load_own_state(self.state, state_dict, strict=self.strict)


def _check_distributed(accelerator: Any) -> None:
    """The Accelerator's processes form one group, or a clear error."""
    kind = str(getattr(accelerator, "distributed_type", "")).split(".")[-1]
    if kind != "NO":
        return
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1:
        raise RuntimeError(
            f"register_scalecom: {launched} processes were launched, but this Accelerator runs "
            "each alone (distributed_type NO): every process would train by itself. Without "
            "a GPU, build Accelerator(cpu=True) (or set ACCELERATE_USE_CPU=true) and launch "
            "with `accelerate launch --multi_gpu --num_processes N`")
    raise RuntimeError(
        "register_scalecom: this Accelerator runs a single process (distributed_type NO), so "
        "there is no exchange to compress. Launch several: `accelerate launch --multi_gpu "
        "--num_processes N script.py` (without a GPU, with Accelerator(cpu=True)); "
        "`--cpu --num_processes N` alone starts one process")


def register_scalecom(accelerator: Any, model: torch.nn.Module, checkpoint: bool = True,
                      **knobs: Any) -> ScaleComHookState:
    """Registers ScaleCom's hook on ``model``, what ``accelerator.prepare``
    returned (DistributedDataParallel), and returns the hook's state.

    ``knobs``: ScaleComHookState's (``ratio``, ``beta``, ``warmup_steps``,
    ``min_numel``, ``clip_factor``, ``clip_norm``, ``share_timeout``).
    Collective: call it on every process, after ``prepare`` and before the
    first backward. ``checkpoint``: also register a ScaleComCheckpoint with
    ``accelerator.register_for_checkpointing`` (register it in the same
    order on every run, as Accelerate numbers its custom objects)."""
    _check_distributed(accelerator)
    ddp, _ = model_and_module(model)
    if ddp is None:
        raise TypeError(
            f"register_scalecom needs the DistributedDataParallel model that "
            f"accelerator.prepare returns; got a {type(model).__name__} (distributed_type "
            f"{str(accelerator.distributed_type).split('.')[-1]}). Pass prepare's result; "
            "DeepSpeed, FSDP and XLA do not run DDP's communication hooks")
    state = ScaleComHookState(ddp, **knobs)
    ddp.register_comm_hook(state, scalecom_hook)
    if checkpoint:
        accelerator.register_for_checkpointing(ScaleComCheckpoint(state))
    return state
