"""ScaleCom's DDP hook state in Ray Train checkpoints, and its figures as metrics.

    from horovod_scalecom.torch.ray_train import hook_metrics, load_hook_state, save_hook_state

    # in the train function, every worker, with a local directory of its own:
    save_hook_state(state, tmpdir)                 # writes scalecom-rank<r>-of-<n>.pt
    ray.train.report({**metrics, **hook_metrics(state)},
                     checkpoint=ray.train.Checkpoint.from_directory(tmpdir))
    # after a restart:
    with ray.train.get_checkpoint().as_directory() as d:
        load_hook_state(state, d)                  # collective: on every worker

The hook's state (each worker's error-feedback memory, the step counters that
pick the leaders, the clip levels) is per rank. Ray Train 2.x uploads the
checkpoint directory of every worker that reports one into the same
checkpoint, so each worker writes its own file under a name of its own, and
the checkpoint counts once every worker has reported it. Nothing here imports
Ray: the functions take the checkpoint's local directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Union

import torch

from horovod_scalecom.torch.ddp import ScaleComHookState

__all__ = ["hook_metrics", "hook_state_path", "load_hook_state", "save_hook_state"]

_FILE = re.compile(r"scalecom-rank(\d+)-of-(\d+)\.pt")

PathLike = Union[str, "os.PathLike[str]"]


def _name(rank: int, world_size: int) -> str:
    return f"scalecom-rank{rank}-of-{world_size}.pt"


def save_hook_state(state: ScaleComHookState, directory: PathLike) -> Path:
    """Write this rank's hook state (``state.state_dict()``) into ``directory``
    as ``scalecom-rank<r>-of-<n>.pt`` (rank and size of the hook's group) and
    return its path. Not collective: every worker calls it on a directory
    that Ray then merges into one checkpoint."""
    path = Path(directory) / _name(state.group.rank(), state.group.size())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state.state_dict(), tmp)
    os.replace(tmp, path)             # a killed writer leaves no half file under the real name
    return path


def hook_state_path(directory: PathLike, rank: int, world_size: int) -> Path:
    """The file of rank ``rank`` in a checkpoint directory, once the directory
    is found to hold one hook state for every rank of a job of ``world_size``
    ranks. Raises ValueError (FileNotFoundError when there is none) naming
    what is wrong. It reads file names only, so every rank that looks at the
    same checkpoint reaches the same verdict: none goes on to
    ``load_state_dict``'s collective while another has raised."""
    directory = Path(directory)
    found: dict[int, set[int]] = {}
    for path in directory.glob("scalecom-rank*-of-*.pt"):
        match = _FILE.fullmatch(path.name)
        if match:
            found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not found:
        raise FileNotFoundError(
            f"no ScaleCom hook state in the checkpoint {directory} (save_hook_state writes "
            "scalecom-rank<r>-of-<n>.pt on every worker before ray.train.report)")
    if len(found) > 1:
        raise ValueError(f"the checkpoint {directory} holds ScaleCom hook states of jobs of "
                         f"{sorted(found)} workers; a checkpoint holds one job's")
    saved, ranks = next(iter(found.items()))
    if saved != world_size:
        # The memory is what each rank's gradients left behind: it cannot be
        # split or merged into another number of ranks.
        raise ValueError(
            f"the checkpoint {directory} holds the ScaleCom hook states of a job of {saved} "
            f"workers; this job has {world_size}. Each worker's error-feedback memory is its "
            f"own and cannot be moved to another number of workers: resume with "
            f"ScalingConfig(num_workers={saved}), or restore the model and optimizer alone "
            "and leave the hook's state empty")
    missing = sorted(set(range(saved)) - ranks)
    if missing:
        raise ValueError(f"the checkpoint {directory} is incomplete: it has no ScaleCom hook "
                         f"state of rank(s) {missing} of {saved}")
    return directory / _name(rank, saved)


def load_hook_state(state: ScaleComHookState, directory: PathLike, strict: bool = True) -> None:
    """Load this rank's file of a checkpoint written by save_hook_state.
    Collective on the hook's group: the file names are checked first
    (hook_state_path: a job of another size, a missing rank), then
    ``state.load_state_dict`` checks the rank, the knobs (unless
    ``strict=False``) and that every rank's steps agree. Any refusal raises on
    every rank, and no rank loads."""
    path = hook_state_path(directory, state.group.rank(), state.group.size())
    state.load_state_dict(torch.load(path, weights_only=True), strict=strict)


def hook_metrics(state: ScaleComHookState, prefix: str = "scalecom/") -> dict[str, Any]:
    """The hook's figures of its last step (``state.stats()``) as flat numbers
    for ``ray.train.report``: ``bytes_sent``, ``dense_bytes`` and
    ``compression`` by docs/algorithm.md's byte model, ``clipped`` and
    ``nonfinite_kept``, and per compressed parameter ``<name>/k`` and
    ``<name>/leader``. Empty before the first step and on a single worker
    (nothing is exchanged)."""
    stats = state.stats()
    if not stats["tensors"]:
        return {}
    out: dict[str, Any] = {f"{prefix}{key}": stats[key] for key in
                           ("bytes_sent", "dense_bytes", "compression", "clipped",
                            "nonfinite_kept")}
    for name, record in stats["tensors"].items():
        if record["k"] is not None:
            out[f"{prefix}{name}/k"] = int(record["k"])
            out[f"{prefix}{name}/leader"] = int(record["leader"])
    return out
