"""The divergence guard: a run that blows up says so, once per tensor.

ScaleCom's memory turns a few bad gradients into many bad steps, and a run
at too high a learning rate can go on for epochs at chance accuracy with
nothing in the log. The guard watches, per compressed tensor:

* ``nonfinite_gradient``: this rank's gradient holds a NaN or Inf (the
  memory refuses it, as README's "NaN and Inf" says, but the step is lost);
* ``gradient_spike``: this rank's gradient norm is more than
  ``SPIKE_FACTOR`` times its running level (the relative clip's level), the
  mark of a run that diverges; with the clip on, the spike is clipped;
* ``nonfinite_memory``: the memory refused non-finite updates;
* ``nonfinite_exchange`` / ``exchange_spike``: the averaged values that came
  back hold a NaN or Inf, or their norm is more than ``SPIKE_FACTOR`` times
  its running level (an average over about 20 exchanges). Every rank sees
  the same values, so every rank reports these alike.

The first event of each tensor is a RuntimeWarning on the rank that sees it,
naming the tensor, the step and the figures; the ``stats()["divergence"]``
of each frontend lists those first events and counts the rest. Costs: the
gradient's norm is the relative clip's own; the exchange's norm reads the
averaged values once (k of them through Horovod's allreduce, the dense mean in the ring).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

SPIKE_FACTOR = 100.0

KINDS = ("nonfinite_gradient", "gradient_spike", "nonfinite_memory", "nonfinite_exchange",
         "exchange_spike")
LEVEL_RHO = 0.95      # the exchange norm's running level


@dataclass
class Event:
    tensor: str
    step: int          # the tensor's exchange count, warm-up steps included
    kind: str
    rank: int
    value: float       # the norm, or the count of refused memory entries
    level: float       # the running norm level at the time (NaN where none)


class DivergenceGuard:
    """Per-rank record of the first event of each tensor (see the module docstring)."""

    def __init__(self) -> None:
        self.first: dict[str, Event] = {}
        self.count = 0
        self.exchange_level: dict[str, float] = {}

    def gradient(self, tensor: str, step: int, rank: int, norm: float, level: float) -> None:
        """The gradient's norm before clipping, against the level before this step."""
        if not math.isfinite(norm):
            self.report(Event(tensor, step, "nonfinite_gradient", rank, norm, level))
        elif level > 0 and norm > SPIKE_FACTOR * level:
            self.report(Event(tensor, step, "gradient_spike", rank, norm, level))

    def memory(self, tensor: str, step: int, rank: int, refused: int) -> None:
        if refused:
            self.report(Event(tensor, step, "nonfinite_memory", rank, float(refused), math.nan))

    def exchange(self, tensor: str, step: int, rank: int, norm: float) -> None:
        """The norm of the averaged values this rank got back (the same on every rank)."""
        level = self.exchange_level.get(tensor, math.nan)
        if not math.isfinite(norm):
            self.report(Event(tensor, step, "nonfinite_exchange", rank, norm, level))
            return
        if level > 0 and norm > SPIKE_FACTOR * level:
            self.report(Event(tensor, step, "exchange_spike", rank, norm, level))
        if norm > 0:
            self.exchange_level[tensor] = (norm if not level > 0
                                           else LEVEL_RHO * level + (1 - LEVEL_RHO) * norm)

    def report(self, event: Event) -> None:
        self.count += 1
        if event.tensor in self.first:
            return
        self.first[event.tensor] = event
        warnings.warn(describe(event), RuntimeWarning, stacklevel=3)

    def stats(self) -> dict[str, Any]:
        return {"events": self.count, "first": [asdict(e) for e in self.first.values()]}


def describe(event: Event) -> str:
    if event.kind == "nonfinite_gradient":
        what = f"its gradient norm is {event.value}"
    elif event.kind == "gradient_spike":
        what = (f"its gradient norm {event.value:.4g} is {event.value / event.level:.0f}x "
                f"its running level {event.level:.4g}")
    elif event.kind == "nonfinite_memory":
        what = f"the memory refused {int(event.value)} non-finite updates"
    elif event.kind == "exchange_spike":
        what = (f"the norm of the averaged values {event.value:.4g} is "
                f"{event.value / event.level:.0f}x its running level {event.level:.4g}")
    else:
        what = "the averaged values that came back hold NaN/Inf"
    return (f"ScaleCom: {event.tensor} at step {event.step} on rank {event.rank}: {what}. "
            "The run is diverging: lower the learning rate or add a learning-rate warm-up; "
            "keep ScaleCom's clip_factor on (it is by default). Reported once per tensor; "
            "stats()['divergence'] counts every event.")
