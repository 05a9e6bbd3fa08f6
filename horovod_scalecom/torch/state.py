"""What ScaleCom keeps between steps, whichever exchange carries the values.

One ``ScaleComState`` per model and process set: the knobs (a
``ScaleComConfig``), and per parameter its error-feedback memory, its step
counter (which picks the leader), its clip level and its registration index.
The Horovod compressor (``ScaleCom.compress``, the exchange through
Horovod's allreduce) and the ScaleCom ring (``DistributedOptimizer``) both
read and advance it, so a checkpoint of it (``state_dict``) resumes either
bit for bit, and the one-time agreement check covers both.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Union

import torch

from horovod_scalecom.config import (
    AGREED, COMPRESSIBLE_DTYPES as COMPRESSIBLE_NAMES, ScaleComConfig, check_numel,
    disagreement_error)
from horovod_scalecom.cuda import load_kernels
from horovod_scalecom.torch._ops import CUDA_KERNELS, ops
from horovod_scalecom.torch.clipping import norm_scale
from horovod_scalecom.torch.watch import Watch

COMPRESSIBLE_DTYPES = tuple(getattr(torch, name) for name in COMPRESSIBLE_NAMES)
STATE_VERSION = 2     # 2: the clip levels

NamedParameters = Union[torch.nn.Module, Iterable[tuple[str, torch.Tensor]]]


@dataclass
class TensorState:
    """Everything ScaleCom keeps for one parameter's gradient."""

    name: str
    param: torch.Tensor
    offset: int                   # added to the step to pick the leader (stagger_leaders)
    index: int                    # registration index: the ring's order, the MPI share's tag
    memory: torch.Tensor | None = None   # float32, made at the first compressed step
    step: int = 0                 # exchanges so far, warm-up included
    checked: bool = False         # numel and Horovod's call checked (once)
    level: float = math.nan       # the relative clip's running norm level (NaN: not yet)
    bypassed: bool = False        # sparse, gathered by Horovod without ScaleCom


class Group(Protocol):
    """The ranks a ScaleComState exchanges with: a Horovod process set
    (horovod_scalecom.torch.horovod_group) or a torch.distributed process
    group (horovod_scalecom.torch.ddp)."""

    def rank(self) -> int: ...
    def size(self) -> int: ...
    def describe(self) -> str: ...
    def before_exchange(self) -> None: ...
    def allgather_row(self, row: torch.Tensor, what: str, timeout: float) -> torch.Tensor: ...
    def broadcast_steps(self, steps: dict[str, int]) -> dict[str, int]: ...


def named_list(named_parameters: NamedParameters) -> list[tuple[str, torch.Tensor]]:
    if isinstance(named_parameters, torch.nn.Module):
        return list(named_parameters.named_parameters())
    if iter(named_parameters) is named_parameters:
        raise TypeError(
            "ScaleCom got a one-shot iterator (such as model.named_parameters()). If the same "
            "iterator is also handed to hvd.DistributedOptimizer, one of them sees it empty. "
            "Pass the model itself, ScaleCom(model, ...), or list(model.named_parameters()).")
    pairs = list(named_parameters)
    if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
               and isinstance(p[1], torch.Tensor) for p in pairs):
        raise TypeError("named_parameters must hold (name, parameter) pairs, as produced by "
                        "model.named_parameters()")
    return pairs


class ScaleComState:
    """The knobs and the per-parameter memory, steps and clip levels of one
    model, on one group of ranks.

    Args:
        named_parameters: the model, or its (name, parameter) pairs.
        config: the knobs (horovod_scalecom.config, the same in every frontend).
        group: the ranks (a Group).
    """

    def __init__(self, named_parameters: NamedParameters, config: ScaleComConfig,
                 group: Group) -> None:
        self.config = config
        self.group = group
        stagger_leaders = config.stagger_leaders
        pairs = named_list(named_parameters)
        names = [n for n, _ in pairs]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"parameter names must be unique; repeated: {', '.join(dups)}")
        self.tensors = {name: TensorState(name, p, i if stagger_leaders else 0, i)
                        for i, (name, p) in enumerate(pairs)}
        # Candidates by shape: finding which parameter's .grad a tensor is costs
        # a few identity checks, not a scan of the model.
        self.by_shape: dict[torch.Size, list[TensorState]] = defaultdict(list)
        for state in self.tensors.values():
            self.by_shape[state.param.shape].append(state)
        self.watch = Watch(config, group.rank)    # the relative clip and the divergence guard
        self._config_checked = False

    @property
    def share_timeout(self) -> float:
        return self.config.share_timeout

    @property
    def stagger_leaders(self) -> bool:
        return self.config.stagger_leaders

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, s.param) for name, s in self.tensors.items()]

    def goes_dense(self, step: int, tensor: torch.Tensor) -> bool:
        """Warm-up steps, small tensors and unsupported dtypes skip compression."""
        return self.config.goes_dense(step, tensor.numel(), tensor.dtype)

    def clip_norm_(self, grad: torch.Tensor) -> None:
        """clip_norm, in place on this rank's floating gradient (a dense one
        too: the rule is per gradient, whatever its exchange). In place is
        safe: the exchange's mean replaces the gradient."""
        if self.config.clip_norm is not None and grad.is_floating_point() and not grad.is_sparse:
            with torch.no_grad():
                grad.mul_(norm_scale(grad, self.config.clip_norm))

    def by_grad(self, tensor: torch.Tensor) -> TensorState | None:
        """The state of the parameter whose .grad the tensor is, if any."""
        for state in self.by_shape.get(tensor.shape, ()):
            if state.param.grad is tensor:
                return state
        for state in self.tensors.values():     # a parameter whose shape changed
            if state.param.grad is tensor:
                return state
        return None

    def kernels(self, tensor: torch.Tensor, name: str):
        """torch.ops.scalecom, once the gradient's device is known to have
        kernels: torch's dispatch then picks the CPU core's or the CUDA ones."""
        if tensor.device.type == "cuda" and not CUDA_KERNELS:
            raise RuntimeError(
                f"ScaleCom: the gradient of {name} is on {tensor.device}, but this build of "
                "horovod_scalecom has no CUDA kernels: setup.py builds them with nvcc when the "
                "installed torch has CUDA (and HOROVOD_SCALECOM_CUDA is not 0). Install the "
                "CUDA toolkit (nvcc on PATH) and run `bash scripts/setup.sh` again.")
        if tensor.device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"ScaleCom: the gradient of {name} is on {tensor.device}; "
                               "ScaleCom runs on CPU and CUDA tensors")
        return ops

    def kernel_table(self, tensor: torch.Tensor, name: str) -> dict[str, int]:
        """The CUDA kernels' C functions by name, for the ring engine, which
        is no torch op and calls them itself."""
        try:
            return load_kernels().addresses()
        except ImportError as exc:
            raise RuntimeError(f"ScaleCom: the gradient of {name} is on {tensor.device}, "
                               f"but {exc}") from exc

    def prepare(self, state: TensorState, tensor: torch.Tensor) -> None:
        """The memory of ``state``, made or moved to where ``tensor`` is."""
        numel = tensor.numel()
        if state.memory is None:
            check_numel(numel, state.name)
            state.memory = torch.zeros(numel, dtype=torch.float32, device=tensor.device)
        elif state.memory.numel() != numel:
            raise ValueError(f"ScaleCom: the gradient of {state.name} has {numel} elements, "
                             f"its memory {state.memory.numel()}; shapes must not change")
        elif state.memory.device != tensor.device:
            # A checkpoint loaded onto the CPU, or a model moved: the memory follows.
            state.memory = state.memory.to(tensor.device)

    def check_config(self) -> bool:
        """Once, at the first exchange: every rank must run ScaleCom with the same
        knobs over the same parameters (names and sizes, and so each tensor's
        leader and numel). Otherwise index shares and ring messages would pair
        unrelated tensors, or one rank would wait for a collective the others
        never start; caught here, the error names the difference. Every rank's
        first exchange makes this call, whichever tensor it is at. True when
        the check ran now: the moment every rank reaches together."""
        self.group.before_exchange()
        if self._config_checked or self.group.size() == 1:
            return False
        self._config_checked = True
        params = "|".join(f"{n}:{s.param.numel()}" for n, s in self.tensors.items())
        values = (*self.config.agreement_row(), len(self.tensors), zlib.crc32(params.encode()))
        every = self.group.allgather_row(
            torch.tensor(values, dtype=torch.float64),
            f"ScaleCom's configuration from every rank of {self.group.describe()}",
            self.share_timeout)
        names = (*AGREED, "number of parameters", "parameter names/sizes checksum")
        error = disagreement_error(names, every.numpy(), " from the same model")
        if error:
            raise error
        return True

    # -- checkpoints and Elastic ----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Memory and step counter of every tensor, for this rank (save one per rank)."""
        return {
            "version": STATE_VERSION,
            "rank": self.group.rank(),
            "size": self.group.size(),
            "config": self.config.as_dict(),
            "tensors": {name: {"step": s.step, "level": s.level,
                               "memory": None if s.memory is None else s.memory.clone()}
                        for name, s in self.tensors.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], same_world: bool = True) -> None:
        """Restore what state_dict() saved on this same rank of a job of the same size.

        ``same_world=False`` skips that check: Horovod Elastic's restore, where
        this process takes back its own memory under whatever rank it has next.
        """
        self.check_state_dict(state_dict, same_world)
        for name, entry in state_dict["tensors"].items():
            state = self.tensors[name]
            state.step = int(entry["step"])
            state.level = float(entry.get("level", math.nan))   # NaN: set at the next step
            memory = entry["memory"]
            state.memory = None if memory is None else (
                memory.detach().to(torch.float32).reshape(-1).clone().contiguous())

    def check_state_dict(self, state_dict: Mapping[str, Any], same_world: bool = True) -> None:
        """Raises ValueError, naming the difference, unless load_state_dict()
        can restore ``state_dict`` here; changes nothing (the DDP hook checks
        every rank before any rank loads)."""
        if not isinstance(state_dict, Mapping) or "tensors" not in state_dict:
            raise ValueError(f"this is not a ScaleCom state (a {type(state_dict).__name__} "
                             "without 'tensors'): load what ScaleCom's state_dict() returned")
        if state_dict.get("version") not in (1, STATE_VERSION):   # 1: before the clip levels
            raise ValueError(f"unknown ScaleCom state version {state_dict.get('version')!r}")
        here = (self.group.rank(), self.group.size()) if same_world else None
        if here is not None and state_dict["size"] != here[1]:
            # The memory is what each rank's gradients left behind: it cannot be
            # split or merged into another number of ranks.
            raise ValueError(
                f"this ScaleCom state was saved by a job of {state_dict['size']} ranks; this "
                f"job has {here[1]}. The error-feedback memory is per rank and cannot be "
                f"moved to another number of ranks: resume with {state_dict['size']} ranks, "
                "or leave ScaleCom's state out of the load (it starts empty).")
        if here is not None and state_dict["rank"] != here[0]:
            raise ValueError(
                f"this ScaleCom state was saved by rank {state_dict['rank']} of "
                f"{state_dict['size']}; it is being loaded on rank {here[0]} of {here[1]}. "
                "The memory is per rank: save and load one state per rank.")
        saved = state_dict["tensors"]
        unknown = sorted(set(saved) - set(self.tensors))
        if unknown:
            raise ValueError(f"the ScaleCom state holds tensors this model does not have: "
                             f"{', '.join(unknown)}")
        for name, entry in saved.items():
            memory = entry["memory"]
            if memory is not None and memory.numel() != self.tensors[name].param.numel():
                raise ValueError(f"{name}: saved memory has {memory.numel()} elements, the "
                                 f"parameter {self.tensors[name].param.numel()}")

    def config_differences(self, state_dict: Mapping[str, Any]) -> list[str]:
        """The knobs every rank must agree on (config.AGREED) whose saved value
        differs from this state's, as ``"ratio (saved 0.05, here 0.01)"``; an
        old state without its configuration has none."""
        saved = state_dict.get("config") or {}
        here = self.config.as_dict()
        return [f"{knob} (saved {saved[knob]!r}, here {here[knob]!r})"
                for knob in AGREED if knob in saved and saved[knob] != here[knob]]

    def world_changed(self) -> None:
        """The world changed (Horovod Elastic: a rank joined or left, or the job
        recovered from a failure): collective, on every rank of the new world,
        after the reset. Everything that depends on the world is decided
        again: the configuration check runs in the new world, and every rank
        takes rank 0's step counters, so all pick the same leader for every
        tensor (a joining rank's counters start at zero). The memory stays
        this process's own: a joining rank starts from an empty one."""
        steps = self.group.broadcast_steps({n: s.step for n, s in self.tensors.items()})
        self._config_checked = False
        for name, step in steps.items():
            self.tensors[name].step = step
        self.check_config()
