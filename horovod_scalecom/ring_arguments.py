"""What the ScaleCom ring refuses when it is built, in one wording for both
frameworks (horovod_scalecom.torch.DistributedOptimizer, and in TensorFlow
the DistributedGradientTape and the Keras DistributedOptimizer);
framework-free.

The ring averages over every rank of an MPI communicator, so Horovod's
arguments that ask for anything else are refused by name, each with the
exchange that does take it: Horovod's own optimizer or tape with
``compression=ScaleCom(...)`` (the Horovod path, docs/usage.md).
``ours`` names the ring's wrapper, ``horovods`` Horovod's.
"""

from __future__ import annotations

from typing import Any

# Horovod's reduction ops, by the name a user writes (hvd.Average, ...).
OP_NAMES = ("Average", "Sum", "Adasum", "Min", "Max", "Product")


def op_name(hvd: Any, op: Any) -> str:
    """``hvd.Sum`` for Horovod's Sum, and so on; repr(op) for anything else."""
    for name in OP_NAMES:
        if getattr(hvd, name, object()) == op:
            return f"hvd.{name}"
    return repr(op)


def require_scalecom(ours: str, horovods: str, compression: Any, scalecom: type) -> None:
    """``compression`` must be this framework's ScaleCom: the ring is ScaleCom's."""
    if not isinstance(compression, scalecom):
        kind = compression if isinstance(compression, type) else type(compression)
        got = "none given" if compression is None else f"got {kind.__name__}"
        raise TypeError(f"{ours} needs compression=ScaleCom(...) ({got}); for other "
                        f"compressors use {horovods}")


def refuse_op(ours: str, horovods: str, hvd: Any, op: Any) -> None:
    """Only hvd.Average: the ring averages."""
    if op == hvd.Average:
        return
    name = op_name(hvd, op)
    if op == hvd.Sum:
        alternative = (f"for op=hvd.Sum use {horovods}(..., op=hvd.Sum, "
                       "compression=ScaleCom(...))")
    else:
        alternative = ("ScaleCom averages or sums: hvd.Sum goes through "
                       f"{horovods}(..., op=hvd.Sum, compression=ScaleCom(...))")
    raise ValueError(f"{ours}: op={name} is not supported: the ScaleCom ring averages, "
                     f"op must be hvd.Average; {alternative}")


def refuse_predivide(ours: str, horovods: str, factor: float) -> None:
    """Only 1: the ring divides the sum by the number of ranks, nothing else."""
    if factor != 1.0:
        raise ValueError(f"{ours}: gradient_predivide_factor={factor!r} is not supported: "
                         "the ScaleCom ring averages; scale the loss instead, or use "
                         f"{horovods}(..., gradient_predivide_factor={factor!r}, "
                         "compression=ScaleCom(...))")


def refuse_process_set(ours: str, horovods: str, process_set_id: int | None,
                       scalecom_set_id: int) -> None:
    """The ring runs over every rank: the wrapper's process set
    (``process_set_id``; None: not given) and ScaleCom's must be the global one."""
    alternative = (f"for a process set use {horovods}(..., process_set=ps) with "
                   "compression=ScaleCom(..., process_set=ps)")
    if process_set_id not in (None, 0):
        raise ValueError(f"{ours}: process_set is not supported: the ScaleCom ring runs "
                         f"over every rank; {alternative}")
    if scalecom_set_id != 0:
        raise ValueError(f"{ours} runs its ring over every rank, but ScaleCom was given a "
                         f"process_set; {alternative}")


def check_groups(ours: str, num_groups: Any, groups: Any) -> int | Any:
    """Horovod's two spellings of one argument, as one: ``groups`` (an int or
    lists of variables), else ``num_groups`` (0: none), else None."""
    if num_groups and groups is not None:
        raise ValueError(f"{ours}: pass num_groups or groups, not both")
    return groups if groups is not None else (num_groups or None)


def check_backward_passes(ours: str, passes: Any) -> int:
    """backward_passes_per_step: an integer >= 1."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"{ours}: backward_passes_per_step must be an integer >= 1, "
                         f"got {passes!r}")
    return passes


def sparse_gradient_error(ours: str, name: str, hint: str = "") -> ValueError:
    """A sparse gradient where the ring needs a dense one; ``hint``: this
    framework's other way out."""
    return ValueError(f"{ours}: the gradient of {name} is sparse; the ring exchanges dense "
                      f"gradients: pass sparse_as_dense=True{hint}")
