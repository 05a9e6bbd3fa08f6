"""What ScaleCom reads of Horovod's internals (horovod_scalecom.horovod_internals):
nothing differs on the Horovod these tests run with, and a Horovod altered to
differ fails at import, with each difference named, never silently."""

import json
import subprocess
import sys
import textwrap

import pytest

from horovod_scalecom.horovod_internals import (
    WRITTEN_AGAINST, tensorflow_differences, torch_differences)

# Each framework's half of Horovod in a process of its own (never both in one).
TORCH = """
import json
import horovod.torch as hvd
from horovod.torch import functions, optimizer
from horovod.torch.elastic.state import TorchState
from horovod_scalecom.horovod_internals import differences
before = differences("torch")

def _allreduce_grad_async(self, tensor):
    return None
def __init__(self, params):
    pass
def broadcast_optimizer_state(optimizer, root_rank, model=None):
    return None
def save(self):
    pass
optimizer._DistributedOptimizer._allreduce_grad_async = _allreduce_grad_async
optimizer._DistributedOptimizer.__init__ = __init__
functions.broadcast_optimizer_state = broadcast_optimizer_state
TorchState.save = save
try:
    import horovod_scalecom.torch.ring_optimizer
    error = None
except ImportError as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"before": before, "error": error}))
"""

TENSORFLOW = """
import json
import horovod.tensorflow as hvd
from horovod_scalecom.horovod_internals import differences
before = differences("tensorflow")

def allreduce(tensor, op=None, compression=None):
    return compression.compress(tensor)
hvd.allreduce = allreduce
try:
    import horovod_scalecom.tensorflow.compression
    error = None
except ImportError as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"before": before, "error": error}))
"""


def run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=240, env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                       **__import__("os").environ})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_torch_internals_are_the_ones_read_and_a_change_fails_at_import():
    result = run(TORCH)
    assert result["before"] == []
    error = result["error"]
    assert error is not None and error.startswith("HorovodInternalsChanged:"), error
    assert f"Horovod {WRITTEN_AGAINST}" in error
    for named in ("_allreduce_grad_async(self, tensor)", "sets no self.op",
                  "sets no self._requires_update", "broadcast_optimizer_state",
                  "TorchState.save does not use self._handlers"):
        assert named in error, (named, error)
    assert "_grouped_allreduce_grad_async" not in error    # left as it was: not named


def test_tensorflow_internals_are_the_ones_read_and_a_change_fails_at_import():
    result = run(TENSORFLOW)
    assert result["before"] == []
    error = result["error"]
    assert error is not None and error.startswith("HorovodInternalsChanged:"), error
    assert "horovod.tensorflow.allreduce(tensor, op, compression) does not take op and " \
           "process_set" in error
    assert "grouped_allreduce" not in error


# Stand-ins shaped like Horovod 0.28.1's objects, checked without Horovod.

class _Optimizer:
    def __init__(self, op, process_set):
        self.op = op
        self.process_set = process_set
        self._requires_update = set()

    def _allreduce_grad_async(self, p):
        return self._compression.compress(p.grad)

    def _grouped_allreduce_grad_async(self, ps):
        return [self._compression.compress(p.grad) for p in ps]


def DistributedOptimizer():  # noqa: N802 - Horovod's name
    pass


DistributedOptimizer.__module__ = "horovod.torch.optimizer"


def _broadcast_optimizer_state(optimizer, root_rank):
    if optimizer.__module__ == DistributedOptimizer.__module__:
        return None


class _TorchState:
    def __init__(self):
        self._handlers = {}

    def save(self):
        return [h.save() for h in self._handlers.values()]

    def restore(self):
        return [h.restore() for h in self._handlers.values()]

    def sync(self):
        return [h.sync() for h in self._handlers.values()]


def test_stand_ins_like_horovod_pass():
    assert torch_differences(_Optimizer, DistributedOptimizer, _broadcast_optimizer_state,
                             _TorchState) == []

    def allreduce(tensor, op=None, process_set=None, compression=None):
        return compression.compress(tensor)
    assert tensorflow_differences(allreduce, allreduce) == []


def test_each_difference_is_named():
    class Moved(_Optimizer):
        _grouped_allreduce_grad_async = None

        def __init__(self):
            pass

    def elsewhere():
        pass

    class NoHandlers(_TorchState):
        def sync(self):
            pass

    found = torch_differences(Moved, elsewhere, _broadcast_optimizer_state, NoHandlers)
    assert found == [
        "horovod.torch's _DistributedOptimizer has no _grouped_allreduce_grad_async() "
        "(ScaleCom reads the op, process set and parameter from its frame)",
        "_DistributedOptimizer.__init__ sets no self.op",
        "_DistributedOptimizer.__init__ sets no self.process_set",
        "_DistributedOptimizer.__init__ sets no self._requires_update",
        "hvd.broadcast_optimizer_state no longer recognises a distributed optimizer by its "
        "class's module 'horovod.torch.optimizer'",
        "horovod.torch.elastic.TorchState.sync does not use self._handlers",
    ]

    def no_compression(tensor, op=None, process_set=None):
        return tensor
    assert tensorflow_differences(no_compression, no_compression) == [
        f"horovod.tensorflow.{name}(tensor, op, process_set) does not take op and process_set "
        "and call compression.compress()" for name in ("allreduce", "grouped_allreduce")]


def test_unknown_framework_is_refused():
    from horovod_scalecom.horovod_internals import differences
    with pytest.raises(ValueError, match="framework must be 'torch' or 'tensorflow'"):
        differences("jax")
