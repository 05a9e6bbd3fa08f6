"""ScaleCom's refusals of Horovod calls it cannot serve, and the wording
shared by the torch and TensorFlow halves about Horovod's process sets and
Elastic. The call itself is read by horovod_scalecom.horovod_internals.
"""

from __future__ import annotations

from typing import Any

from horovod_scalecom.horovod_internals import HorovodCall

_MISSING = object()


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
