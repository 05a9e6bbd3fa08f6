"""The relative clip and the divergence guard for torch tensors, shared by
every exchange of a ScaleComState (Horovod's allreduce, the ring, DDP).

The clip's arithmetic is the C++ core's (docs/algorithm.md, step 0); the
guard's rules are horovod_scalecom.guard's. On a GPU the guard's figures stay
device tensors until stats() (or a step later) asks for them, so watching
costs no synchronisation per tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from horovod_scalecom.config import CLIP_RHO, ScaleComConfig
from horovod_scalecom.guard import DivergenceGuard
from horovod_scalecom.torch._ops import ops


class Watch:
    """Per ScaleCom object: clips gradients, hands figures to the guard."""

    def __init__(self, config: ScaleComConfig, rank: Callable[[], int]) -> None:
        self.factor = config.clip_factor_or_zero
        self._rank = rank       # the rank events are told under (it changes under Elastic)
        self.guard = DivergenceGuard()
        self._pending: list[tuple] = []

    def clip(self, state: Any, step: int, g: torch.Tensor) -> tuple[float, float]:
        """The relative clip of this rank's flat float32 gradient ``g``:
        advances ``state.level``, shows the norm to the guard and returns
        (norm, scale); the caller multiplies g by the scale in place (a
        float32 value, so torch's float32 product is the core's). The CPU core takes the norm
        in its canonical order; on a GPU torch sums the squares, so the last
        bits of the scale may differ from the CPU's."""
        before = state.level
        if g.device.type == "cpu":
            sum_sq = ops.sum_squares(g)
        else:
            sum_sq = float(torch.sum(torch.square(g.double())))
        norm, state.level, scale = ops.clip_step(sum_sq, before, self.factor, CLIP_RHO)
        self.guard.gradient(state.name, step, self._rank(), norm, before)
        return norm, scale

    def memory(self, name: str, step: int, refused) -> None:
        """How many memory entries refused a non-finite update (int or device tensor)."""
        self._hand("memory", name, step, refused)

    def exchange(self, name: str, step: int, values: torch.Tensor) -> None:
        """The averaged values this rank got back (one read of them: the core's
        sum of squares on the CPU, torch's float32 norm on a GPU)."""
        if values.device.type == "cpu":
            flat = values.reshape(-1)
            flat = (flat if flat.dtype == torch.float32 else flat.float()).contiguous()
            norm = math.sqrt(ops.sum_squares(flat))
        else:
            norm = torch.linalg.vector_norm(values.float())
        self._hand("exchange", name, step, norm)

    def stats(self) -> dict[str, Any]:
        self.flush()
        return self.guard.stats()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for what, name, step, figure in pending:
            self._hand(what, name, step, figure.cpu())

    def flush_if_behind(self, tensors: int) -> None:
        """GPU figures of more than two steps: read them (long computed, no real wait)."""
        if len(self._pending) > 2 * tensors:
            self.flush()

    def _hand(self, what: str, name: str, step: int, figure) -> None:
        if isinstance(figure, torch.Tensor) and figure.device.type != "cpu":
            self._pending.append((what, name, step, figure))
        elif what == "memory":
            self.guard.memory(name, step, self._rank(), int(figure))
        else:
            self.guard.exchange(name, step, self._rank(), float(figure))
