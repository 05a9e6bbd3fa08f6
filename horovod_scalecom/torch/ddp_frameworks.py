"""What the training frameworks' integrations of the DDP hook share
(horovod_scalecom.torch.lightning, horovod_scalecom.torch.accelerate): every
rank's hook state in the one checkpoint file that one process writes, and
the hook's figures as flat numbers for a metrics logger.

The hook's state is per rank (each rank's error-feedback memory differs),
while PyTorch Lightning and Hugging Face Accelerate write their checkpoints
from the first process only. So saving gathers every rank's
``ScaleComHookState.state_dict()`` to the group's first rank, which puts
them all in its checkpoint, and loading hands each rank its own entry.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from horovod_scalecom.torch.ddp import ScaleComHookState

# The version of the gathered format below.
RANKS_VERSION = 1


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it copied to the CPU: a checkpoint must
    load on any device, and the gather pickles what it sends."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    return value


def gather_states(state: ScaleComHookState) -> dict[str, Any]:
    """Every rank's hook state, for a checkpoint that one process writes.

    Collective: call it on every rank of the hook's group. The group's first
    rank gets ``{"version", "world_size", "ranks": [state of rank 0, ...]}``
    (every state's tensors on the CPU); the other ranks get the same with
    ``"ranks": None`` (the frameworks write the first rank's only). Ends
    within the state's ``share_timeout``: a rank that never arrives makes
    the others raise."""
    group = state.group
    first = group.rank() == 0
    every: Optional[list] = [None] * group.size() if first else None
    try:
        dist.gather_object(_on_cpu(state.state_dict()), every, dst=group.global_rank(0),
                           group=group.index_group)
    except RuntimeError as exc:
        raise RuntimeError(
            f"ScaleCom: rank {group.rank()} could not gather every rank's hook state for the "
            f"checkpoint ({exc}). Saving is collective: every rank must save the checkpoint "
            "at the same step") from exc
    return {"version": RANKS_VERSION, "world_size": group.size(), "ranks": every}


def check_saved(saved: Any, world_size: int) -> None:
    """Raises ValueError, naming the problem, unless ``saved`` (what
    gather_states returned on the first rank) fits a job of ``world_size``
    ranks. No collective: every rank reads the same checkpoint and raises
    alike."""
    if not isinstance(saved, Mapping) or "ranks" not in saved or "world_size" not in saved:
        raise ValueError("this is not ScaleCom's gathered hook state (a "
                         f"{type(saved).__name__} without 'ranks' and 'world_size')")
    if saved.get("version") != RANKS_VERSION:
        raise ValueError(f"unknown version {saved.get('version')!r} of ScaleCom's gathered "
                         "hook state")
    if saved["world_size"] != world_size:
        # The memory is what each rank's gradients left behind: it cannot be
        # split or merged into another number of ranks.
        raise ValueError(
            f"this checkpoint holds the ScaleCom hook states of {saved['world_size']} rank(s); "
            f"this job has {world_size}. The error-feedback memory is per rank and cannot "
            f"move to another number of ranks: resume on {saved['world_size']} rank(s), or "
            "resume without ScaleCom's entry in the checkpoint (the memory then starts empty)")
    ranks = saved["ranks"]
    if not isinstance(ranks, (list, tuple)) or len(ranks) != world_size:
        raise ValueError("this checkpoint's ScaleCom entry holds no rank's hook state: it was "
                         "written by a process other than the job's first, which alone "
                         "gathers them; resume from the first process's checkpoint")


def load_own_state(state: ScaleComHookState, saved: Mapping[str, Any],
                   strict: bool = True) -> None:
    """Loads this rank's entry of ``saved`` (gather_states on the first rank)
    into ``state``. Collective, as ``ScaleComHookState.load_state_dict``: a
    rank whose entry does not fit (another rank's, other knobs with
    ``strict``, other parameters) makes every rank raise, none loading."""
    check_saved(saved, state.group.size())
    state.load_state_dict(saved["ranks"][state.group.rank()], strict=strict)


def figures(state: ScaleComHookState) -> dict[str, float]:
    """The hook's figures of its last exchange, flat, for a metrics logger
    (empty before the first exchange):

    ``bytes_sent``, ``dense_bytes``, ``compression``: as in ``stats()``
    (docs/algorithm.md's byte model, every parameter of the model);
    ``k``: the values sent, summed over the compressed parameters (0 while
    every parameter goes dense);
    ``leader``: the last exchange's leader (every parameter's: under DDP
    they are exchanged together, so their counts and leaders agree), absent
    while every parameter goes dense;
    ``exchanges``: the exchanges so far (each synchronizing step is one).
    """
    stats = state.stats()
    if not stats["tensors"]:
        return {}
    compressed = [t for t in stats["tensors"].values() if t["k"] is not None]
    out = {"bytes_sent": float(stats["bytes_sent"]), "dense_bytes": float(stats["dense_bytes"]),
           "compression": float(stats["compression"]),
           "k": float(sum(t["k"] for t in compressed)),
           "exchanges": float(max(s.step for s in state.state.tensors.values()))}
    if compressed:
        out["leader"] = float(compressed[0]["leader"])
    return out
