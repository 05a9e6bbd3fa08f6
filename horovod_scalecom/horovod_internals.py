"""Every use ScaleCom makes of Horovod's internals, in one place.

Written against Horovod 0.28.1 (``WRITTEN_AGAINST``). Horovod's public API
does not give ScaleCom four things it needs:

1. **The call that hands over a gradient** (``horovod_call``). The
   Compressor interface passes the tensor alone: not the reduction op, not
   the process set, not the parameter (``sparse_as_dense`` hands over a
   densified copy). ScaleCom needs them to refuse what it cannot do (Adasum,
   Min, Max, another process set) before a collective that not every rank
   joins, and to find the parameter behind a copy. They are the locals of
   Horovod's frame one or two levels above ``compress``: torch's
   ``_DistributedOptimizer._allreduce_grad_async(self, p)`` and
   ``_grouped_allreduce_grad_async(self, ps)`` (``self.op``,
   ``self.process_set``, ``p``); TensorFlow's ``allreduce`` and
   ``grouped_allreduce`` (``op``, ``process_set``).
2. **The parameters torch's optimizer still expects this step**
   (``requires_update``: its ``_requires_update``), so that the Horovod
   broadcast of the leaders' indices can post its receives ahead.
3. **Horovod Elastic's per-object handlers** (``add_state_handler``: a
   ``TorchState``'s ``_handlers``), so that ScaleCom's memory is saved,
   restored and synchronised with the model.
4. **How ``hvd.broadcast_optimizer_state`` recognises a distributed
   optimizer** (``HOROVOD_OPTIMIZER_MODULE``): by its class's module; it then
   steps the inner optimizer only. The ring's optimizer class carries that
   module, so a broadcast never starts an exchange on some ranks only.

``differences(framework)`` compares the installed Horovod with what these
rely on. The modules that use them call ``require(framework)`` when they
are imported, so a Horovod whose internals moved fails there, naming each
difference, rather than training with a refusal silently skipped or a
broadcast that hangs. tests/test_horovod_internals.py checks both: no
difference on the Horovod it runs with, and each one named on a Horovod
altered to differ.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable

WRITTEN_AGAINST = "0.28.1"
HOROVOD_OPTIMIZER_MODULE = "horovod.torch.optimizer"

_MISSING = object()


class HorovodInternalsChanged(ImportError):
    """The installed Horovod differs from the internals ScaleCom relies on."""


# -- 1. the call that hands over a gradient ---------------------------------------------

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
    past a list comprehension's frame), read as a HorovodCall; None where
    the caller is not Horovod (a direct call, a test).

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


# -- 2. and 3. torch's optimizer and Elastic state ----------------------------------------

def requires_update(optimizer: Any) -> Any:
    """The parameters Horovod's torch optimizer hands over this step (a live set)."""
    return optimizer._requires_update


def follows_updates(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a Horovod optimizer whose hand-overs can be foreseen."""
    return hasattr(optimizer, "_requires_update")


def add_state_handler(state: Any, name: str, handler: Any) -> None:
    """Registers ``handler`` (a StateHandler) on a Horovod ``TorchState`` under
    ``name``: its save, restore and sync then run with the model's."""
    state._handlers[name] = handler


# -- the check ----------------------------------------------------------------------------

def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def torch_differences(optimizer_class: Any, distributed_optimizer: Callable,
                      broadcast_optimizer_state: Callable, torch_state: Any) -> list[str]:
    """What differs, in these Horovod torch objects, from what ScaleCom reads."""
    found = []
    for method, params in (("_allreduce_grad_async", ["self", "p"]),
                           ("_grouped_allreduce_grad_async", ["self", "ps"])):
        function = getattr(optimizer_class, method, None)
        if function is None:
            found.append(f"horovod.torch's _DistributedOptimizer has no {method}() (ScaleCom "
                         "reads the op, process set and parameter from its frame)")
        elif _parameters(function) != params or "self._compression.compress(" not in \
                _source(function):
            found.append(f"_DistributedOptimizer.{method}({', '.join(_parameters(function))}) "
                         f"is not ({', '.join(params)}) calling self._compression.compress()")
    init = _source(getattr(optimizer_class, "__init__", None))
    for attribute in ("self.op", "self.process_set", "self._requires_update"):
        if f"{attribute} =" not in init:
            found.append(f"_DistributedOptimizer.__init__ sets no {attribute}")
    module = getattr(distributed_optimizer, "__module__", None)
    if module != HOROVOD_OPTIMIZER_MODULE or \
            "optimizer.__module__ == DistributedOptimizer.__module__" not in \
            _source(broadcast_optimizer_state):
        found.append("hvd.broadcast_optimizer_state no longer recognises a distributed "
                     f"optimizer by its class's module {HOROVOD_OPTIMIZER_MODULE!r}")
    for method in ("__init__", "save", "restore", "sync"):
        if "self._handlers" not in _source(getattr(torch_state, method, None)):
            found.append(f"horovod.torch.elastic.TorchState.{method} does not use "
                         "self._handlers")
    return found


def tensorflow_differences(allreduce: Callable, grouped_allreduce: Callable) -> list[str]:
    """What differs, in Horovod's TensorFlow allreduces, from what ScaleCom reads."""
    found = []
    for name, function in (("allreduce", allreduce), ("grouped_allreduce", grouped_allreduce)):
        params = _parameters(function)
        if not {"op", "process_set"} <= set(params) or "compression.compress(" not in \
                _source(function):
            found.append(f"horovod.tensorflow.{name}({', '.join(params)}) does not take op "
                         "and process_set and call compression.compress()")
    return found


def differences(framework: str) -> list[str]:
    """What differs between the installed Horovod and what ScaleCom reads of
    it, for ``framework`` ("torch" or "tensorflow"; each imports only its own
    half of Horovod)."""
    if framework == "torch":
        from horovod.torch import functions, optimizer
        from horovod.torch.elastic.state import TorchState
        return torch_differences(optimizer._DistributedOptimizer, optimizer.DistributedOptimizer,
                                 functions.broadcast_optimizer_state, TorchState)
    if framework == "tensorflow":
        import horovod.tensorflow as hvd
        return tensorflow_differences(hvd.allreduce, hvd.grouped_allreduce)
    raise ValueError(f"framework must be 'torch' or 'tensorflow', got {framework!r}")


@functools.cache
def require(framework: str) -> None:
    """Raises HorovodInternalsChanged, naming each difference, unless the
    installed Horovod has the internals ScaleCom relies on."""
    found = differences(framework)
    if found:
        import horovod
        raise HorovodInternalsChanged(
            f"horovod_scalecom was written against Horovod {WRITTEN_AGAINST}'s internals; the "
            f"installed Horovod {getattr(horovod, '__version__', '?')} differs:\n  - "
            + "\n  - ".join(found)
            + f"\nInstall horovod=={WRITTEN_AGAINST} (scripts/setup.sh pins it), or see "
            "horovod_scalecom/horovod_internals.py for what each of these is used for.")
