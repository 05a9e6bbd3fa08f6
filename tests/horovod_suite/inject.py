"""ScaleCom injected into Horovod's TensorFlow wrappers, for Horovod's own tests
(tests/horovod_suite/run.py loads this from the conftest.py it writes).

$SCALECOM_SUITE_MODE:

* ``none``: Horovod as it is (the baseline);
* ``horovod``: Horovod's own tape and optimizers, with
  ``compression=ScaleCom(...)`` where a test leaves Horovod's default (the
  Horovod path);
* ``ring``: horovod_scalecom's ring in place of
  ``hvd.DistributedGradientTape``, ``hvd.PartialDistributedGradientTape``
  and the Keras ``DistributedOptimizer``/``PartialDistributedOptimizer``,
  called with Horovod's signatures.

$SCALECOM_SUITE_MIN_NUMEL sets ScaleCom's min_numel (default: ScaleCom's).
A ring wrapper that refuses to be built appends the test's id and the
message to $SCALECOM_SUITE_OUT/refusals_rank<r>.jsonl before it raises, so
the runner can tell a refusal from a failure.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
from pathlib import Path

import tensorflow as tf
import horovod.keras as hvd_keras
import horovod.tensorflow as hvd
import horovod.tensorflow.keras as hvd_tf_keras
from horovod.tensorflow.compression import Compression

from horovod_scalecom.tensorflow import ScaleCom

MODE = os.environ.get("SCALECOM_SUITE_MODE", "none")

# Horovod's wrapper -> the ring's (module, name).
RING = {(hvd, "DistributedGradientTape"):
            ("horovod_scalecom.tensorflow", "DistributedGradientTape"),
        (hvd, "PartialDistributedGradientTape"):
            ("horovod_scalecom.tensorflow", "PartialDistributedGradientTape"),
        (hvd_tf_keras, "DistributedOptimizer"):
            ("horovod_scalecom.tensorflow.keras", "DistributedOptimizer"),
        (hvd_keras, "DistributedOptimizer"):
            ("horovod_scalecom.tensorflow.keras", "DistributedOptimizer"),
        (hvd_keras, "PartialDistributedOptimizer"):
            ("horovod_scalecom.tensorflow.keras", "PartialDistributedOptimizer")}


# A wrapper built inside tf.function is built again at every trace, and a
# ScaleCom (its variables) made at a later trace is refused: there, one
# ScaleCom per test and function, as a user would make one outside it.
# Autograph traces a converted copy (another file, "tf__" + the name).
_TRACED: dict[tuple, ScaleCom] = {}


def new_scalecom() -> ScaleCom:
    min_numel = os.environ.get("SCALECOM_SUITE_MIN_NUMEL")
    return ScaleCom(min_numel=int(min_numel)) if min_numel else ScaleCom()


def scalecom(compression):
    """A ScaleCom where the test left Horovod's default compression."""
    if compression is not Compression.none:
        return compression
    if not tf.inside_function():
        return new_scalecom()
    caller = next(f for f in inspect.stack(0)[1:] if f.filename != __file__)
    key = (os.environ.get("PYTEST_CURRENT_TEST", ""), caller.function.removeprefix("tf__"))
    if key not in _TRACED:
        with tf.init_scope():
            _TRACED[key] = new_scalecom()
    return _TRACED[key]


def given(signature: inspect.Signature, args, kwargs) -> dict:
    """The arguments of a call of Horovod's wrapper that differ from its defaults."""
    bound = signature.bind(*args, **kwargs)
    out = {}
    for name, value in bound.arguments.items():
        default = signature.parameters[name].default
        if default is inspect.Parameter.empty or not (
                value is default or (type(value) is type(default) and value == default)):
            out[name] = value
    return out


def recorded(build):
    """``build``, with its refusals written down for the runner."""
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            out = Path(os.environ["SCALECOM_SUITE_OUT"])
            rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
            with open(out / f"refusals_rank{rank}.jsonl", "a") as f:
                f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                                    "error": f"{type(exc).__name__}: {exc}"}) + "\n")
            raise
    return wrapper


def to_ring(horovods, ring):
    """Horovod's wrapper called as Horovod's, building the ring's: the
    wrapped tape or optimizer, ScaleCom, and the arguments the test gave."""
    signature = inspect.signature(horovods)
    first = next(iter(signature.parameters))

    def wrapper(*args, **kwargs):
        arguments = given(signature, args, kwargs)
        wrapped = arguments.pop(first)
        compression = scalecom(arguments.pop("compression", Compression.none))
        return ring(wrapped, compression, **arguments)
    return recorded(functools.wraps(horovods)(wrapper))


def with_scalecom(horovods):
    """Horovod's own wrapper, with ScaleCom where the test left no compression."""
    signature = inspect.signature(horovods)

    @functools.wraps(horovods)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["compression"] = scalecom(
            bound.arguments.get("compression", Compression.none))
        return horovods(*bound.args, **bound.kwargs)
    return wrapper


def install() -> None:
    if MODE not in ("none", "horovod", "ring"):
        raise ValueError(f"SCALECOM_SUITE_MODE={MODE!r}: expected none, horovod or ring")
    for (module, name), (ring_module, ring_name) in RING.items():
        horovods = getattr(module, name)
        if MODE == "horovod":
            setattr(module, name, with_scalecom(horovods))
        elif MODE == "ring":
            # A ring without this wrapper (an earlier version) leaves Horovod's.
            ring = getattr(importlib.import_module(ring_module), ring_name, None)
            if ring is not None:
                setattr(module, name, to_ring(horovods, ring))
