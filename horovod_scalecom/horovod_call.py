"""What ScaleCom reads of the Horovod call that hands it a gradient.

Horovod's Compressor interface passes the tensor alone: not the reduction op,
not the process set, not the parameter (``sparse_as_dense`` hands over a
densified copy). ScaleCom needs them to refuse what it cannot do (Adasum, Min,
Max, a process set other than its own) with an error that names the argument,
before a collective that not every rank joins, and to find the parameter
behind a copy. They are the locals of Horovod's own frame one or two levels
above ``compress``:

- torch: ``_DistributedOptimizer._allreduce_grad_async(self, p)`` and
  ``_grouped_allreduce_grad_async(self, ps)`` (``self.op``,
  ``self.process_set``, ``p``);
- TensorFlow: ``horovod.tensorflow.allreduce(tensor, ..., op, ...,
  process_set)`` and ``grouped_allreduce``.

Where the caller is not Horovod (a direct call, a test) nothing is read and
nothing is checked. Horovod 0.28.1 is the release this was written against.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass
class HorovodCall:
    """The reduction and the process set of the allreduce that will carry the
    compressed values, and (torch) the parameter whose gradient it is."""

    function: str       # Horovod's function: which collective carries the values
    op: Any
    process_set: Any
    param: Any = None
    owner: Any = None   # torch: the Horovod optimizer making the call


def horovod_call(depth: int = 2) -> HorovodCall | None:
    """The Horovod frame ``depth`` levels up (or up to two levels above it,
    past a list comprehension's frame), read as a HorovodCall.

    Inside tf.function, autograph runs converted copies of Horovod's
    functions (``tf__allreduce``, with Horovod's globals) and of their
    branches (``else_body_13``), called through TensorFlow's own frames
    (``converted_call``, ``if_stmt``): those are passed over, and the
    function is the converted one's name without its ``tf__``."""
    frame = sys._getframe(depth)
    seen = 0
    while frame is not None and seen < 3:
        module = frame.f_globals.get("__name__", "")
        name = frame.f_code.co_name
        generated = "__autograph_generated_file" in frame.f_code.co_filename
        if module.startswith("tensorflow."):
            frame = frame.f_back          # autograph's machinery: not counted
            continue
        seen += 1
        # A comprehension's frame (<listcomp>) sees the caller's `self` as a
        # free variable: the function that made it is one level further up.
        # An autograph branch body's function is further up as well.
        if (module.startswith("horovod.") and not name.startswith("<")
                and (not generated or name.startswith("tf__"))):
            found = _read(name.removeprefix("tf__"), frame.f_locals)
            if found is not None:
                return found
        frame = frame.f_back
    return None


def _read(function: str, local: dict[str, Any]) -> HorovodCall | None:
    owner = local.get("self")
    op = getattr(owner, "op", _MISSING) if owner is not None else local.get("op", _MISSING)
    process_set = (getattr(owner, "process_set", _MISSING) if owner is not None
                   else local.get("process_set", _MISSING))
    if op is _MISSING or process_set is _MISSING:
        return None
    return HorovodCall(function, op, process_set, local.get("p"), owner)


def same_process_set(a: Any, b: Any) -> bool:
    """Horovod ProcessSets are equal when they hold the same ranks."""
    return a is b or getattr(a, "process_set_id", None) == getattr(b, "process_set_id", _MISSING)


def describe_process_set(process_set: Any) -> str:
    ranks = getattr(process_set, "ranks", None)
    if getattr(process_set, "process_set_id", None) == 0:
        return "the global process set"
    return f"the process set of ranks {ranks}" if ranks is not None else repr(process_set)


# The Horovod functions whose collective ScaleCom's values are made for: an
# allreduce of k values at indices every rank shares.
ALLREDUCES = ("_allreduce_grad_async", "_grouped_allreduce_grad_async",   # torch optimizer
              "allreduce", "grouped_allreduce")                           # TensorFlow


REDUCE_OPS = ("Average", "Sum", "Adasum", "Min", "Max", "Product")
SUPPORTED_OPS = ("Average", "Sum")


def check_call(call: HorovodCall, hvd: Any, process_set: Any) -> None:
    """Refuses, with the argument named, a Horovod call whose collective would
    not turn ScaleCom's values into the average (or sum) of the gradients.
    ``hvd``: horovod.torch or horovod.tensorflow, whose op values it names."""
    names = {getattr(hvd, name): name for name in REDUCE_OPS if hasattr(hvd, name)}
    op_names = {getattr(hvd, name): name for name in SUPPORTED_OPS}
    if call.function not in ALLREDUCES:
        raise ValueError(
            f"ScaleCom: Horovod's {call.function}() handed it a tensor; ScaleCom's values are "
            "made for an allreduce at indices every rank shares (hvd.DistributedOptimizer, "
            "DistributedGradientTape, hvd.allreduce). Use another compression for "
            f"{call.function}.")
    if call.op not in op_names:
        supported = " or ".join(f"op=hvd.{name}" for name in op_names.values())
        raise ValueError(
            f"ScaleCom: the allreduce's op=hvd.{names.get(call.op, call.op)} is not supported; "
            f"ScaleCom averages or sums the values at the leader's indices. Use {supported} "
            "(for Adasum, use Horovod without ScaleCom).")
    if not same_process_set(call.process_set, process_set):
        raise ValueError(
            f"ScaleCom: the optimizer reduces over {describe_process_set(call.process_set)}, "
            f"ScaleCom was built for {describe_process_set(process_set)}. Give both the same "
            "process set: ScaleCom(..., process_set=ps) and "
            "hvd.DistributedOptimizer(..., process_set=ps).")


def unheld_error(state_class: str) -> RuntimeError:
    """ScaleCom under Horovod Elastic, exchanging outside a State that carries it."""
    return RuntimeError(
        "ScaleCom runs under Horovod Elastic (HOROVOD_ELASTIC=1) but no State holds it: after "
        "a reset its leaders and configuration would belong to the old world. Use "
        f"{state_class}(..., scalecom=compression) in place of Horovod's State, and exchange "
        "only inside hvd.elastic.run (a step before it is a collective that a joining worker "
        "would run alone).")
