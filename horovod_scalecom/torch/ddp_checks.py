"""What ScaleCom's DDP hook accepts as its model and as its bucket, and the
clear errors for everything else (horovod_scalecom.torch.ddp).

The hook is written for DistributedDataParallel's C++ reducer: it receives
whole buckets (``dist.GradBucket``) and returns futures. Other wrappers have
hooks of the same name but another contract (FSDP hands its hook a flat
gradient shard; DDP under compiled autograd, ``optimize_ddp="python_reducer"``,
hands it ``(grad, param)`` pairs inside a traced graph), so a state built for
them would fail deep inside the exchange, or not at all until a collective
times out. They are refused here, at ``ScaleComHookState(...)``, on every rank.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

PYTHON_REDUCER = (
    'torch._dynamo.config.optimize_ddp = "python_reducer" (DDP under compiled autograd) '
    "calls communication hooks once per parameter with (grad, param), inside the "
    "compiled backward, and expects traceable functional collectives; ScaleCom's hook "
    "needs the C++ reducer's buckets and futures. Leave optimize_ddp at its default "
    '("ddp_optimizer": torch.compile works with the hook) and compiled autograd off')


def _compiled_original(model: torch.nn.Module) -> torch.nn.Module:
    """The module torch.compile wrapped (``_orig_mod``), else ``model``: the
    parameters and their names are the original module's, so a state built
    from a compiled model checkpoints under the eager model's names."""
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, torch.nn.Module) else model


def _refuse_other_wrappers(model: torch.nn.Module) -> None:
    """FSDP (either API) and DataParallel are not DDP: say so, naming the class."""
    name = type(model).__name__
    fsdp = sys.modules.get("torch.distributed.fsdp")
    kinds = tuple(getattr(fsdp, n) for n in ("FullyShardedDataParallel", "FSDPModule")
                  if fsdp is not None and hasattr(fsdp, n))
    if kinds and isinstance(model, kinds):
        raise TypeError(
            f"ScaleComHookState got a {name} (FSDP): ScaleCom's hook is a "
            "DistributedDataParallel communication hook. FSDP shards the gradients and "
            "calls its hooks with a shard, not a bucket; wrap the model in "
            "torch.nn.parallel.DistributedDataParallel instead")
    if isinstance(model, torch.nn.DataParallel):
        raise TypeError(
            f"ScaleComHookState got a {name}: DataParallel runs in one process and has no "
            "communication hook; use torch.nn.parallel.DistributedDataParallel (one process "
            "per device, launched by torchrun)")


def model_and_module(model: Any) -> tuple[Optional[DistributedDataParallel], torch.nn.Module]:
    """(the DDP wrapper or None, the module whose parameters DDP averages),
    looking through torch.compile on either side of DDP; TypeError for
    anything the hook cannot serve."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be the torch.nn.Module DDP wraps (or the DDP "
                        f"wrapper), got {type(model).__name__}")
    model = _compiled_original(model)
    _refuse_other_wrappers(model)
    if isinstance(model, DistributedDataParallel):
        if getattr(model, "_use_python_reducer", False):
            raise TypeError(f"ScaleCom's DDP hook cannot serve this DDP model: {PYTHON_REDUCER}")
        return model, _compiled_original(model.module)
    # Only where torch._dynamo is loaded already: importing it costs seconds.
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    if dynamo_utils is not None and dynamo_utils.get_optimize_ddp_mode() == "python_reducer":
        raise TypeError(f"ScaleCom's DDP hook cannot serve DDP models built now: {PYTHON_REDUCER}")
    return None, model


def check_bucket(bucket: Any) -> None:
    """The hook was handed something other than a DDP bucket: it was registered
    where DDP's C++ reducer does not call it."""
    if isinstance(bucket, dist.GradBucket):
        return
    if isinstance(bucket, tuple):
        raise TypeError(f"ScaleCom's DDP hook got a {type(bucket).__name__} instead of a "
                        f"dist.GradBucket: {PYTHON_REDUCER}")
    raise TypeError(
        f"ScaleCom's DDP hook got a {type(bucket).__name__} instead of a dist.GradBucket: "
        "it is a DistributedDataParallel communication hook; register it with "
        "DistributedDataParallel.register_comm_hook (FSDP's hooks receive gradient shards)")
