"""What is installed and loads, for the self-check's report.

Each framework is probed in a child process of its own
(``python -m horovod_scalecom.check.probe torch|tensorflow`` prints one JSON
object): loading horovod.torch and horovod.tensorflow in one process is not
supported. MPI and the CUDA kernels (plain shared libraries) are probed here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

Probe = dict[str, Any]


def _attempt(what: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, what it returned) or (False, the error on one line)."""
    try:
        return True, what()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        first = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"{type(exc).__name__}: {first}"


def _loads(module: str, *attributes: str) -> Callable[[], bool]:
    """A probe that imports ``module`` and its (lazily loaded) ``attributes``."""
    def load() -> bool:
        loaded = importlib.import_module(module)
        for name in attributes:
            getattr(loaded, name)
        return True
    return load


def _horovod(module: str) -> Callable[[], Probe]:
    """Horovod's version and how it was built, from its own API (no init)."""
    def flags() -> Probe:
        hvd = importlib.import_module(module)
        built = {name: bool(getattr(hvd, f"{name}_built")())
                 for name in ("mpi", "gloo", "nccl", "cuda", "rocm", "ddl", "ccl")}
        return {"version": version("horovod"), "flags": built}
    return flags


def probe_torch() -> Probe:
    import torch
    from torch import distributed

    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "gpus": torch.cuda.device_count() if torch.version.cuda else 0,
            "gloo": distributed.is_available() and distributed.is_gloo_available(),
            # ops: whether torch.ops.scalecom has CUDA kernels, once it loads
            "ops": _attempt(lambda: bool(importlib.import_module("horovod_scalecom.torch._ops")
                                         .CUDA_KERNELS)),
            "ddp": _attempt(_loads("horovod_scalecom.torch.ddp")),
            "horovod": _attempt(_horovod("horovod.torch")),
            "frontend": _attempt(_loads("horovod_scalecom.torch", "ScaleCom",
                                        "DistributedOptimizer")),
            "ring": _attempt(lambda: bool(importlib.import_module("horovod_scalecom.ring")
                                          .load_ring()))}


def probe_tensorflow() -> Probe:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return {"version": tf.__version__, "cuda": tf.test.is_built_with_cuda(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "ops": _attempt(_loads("horovod_scalecom.tensorflow._ops")),
            "horovod": _attempt(_horovod("horovod.tensorflow")),
            "frontend": _attempt(_loads("horovod_scalecom.tensorflow", "ScaleCom",
                                                   "DistributedGradientTape")),
            "keras": _attempt(_loads("horovod_scalecom.tensorflow.keras",
                                                "ScaleComCallback"))}


PROBES: dict[str, Callable[[], Probe]] = {"torch": probe_torch, "tensorflow": probe_tensorflow}


def framework(name: str, timeout: float = 120) -> Probe:
    """Probe ``name`` (torch or tensorflow) in a child process. ``missing``
    when the framework is not installed, ``error`` when the probe itself
    failed (a crash while importing, say)."""
    if importlib.util.find_spec(name) is None:
        return {"missing": True}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-m", "horovod_scalecom.check.probe", name],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"importing {name} took over {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probing {name} failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def mpi() -> Probe:
    """mpirun and the MPI library mpi4py (if installed) was built with."""
    found: Probe = {"mpirun": shutil.which("mpirun")}
    if found["mpirun"]:
        ok, text = _attempt(lambda: subprocess.run(
            [found["mpirun"], "--version"], capture_output=True, text=True, timeout=30).stdout)
        found["mpirun_version"] = text.strip().splitlines()[0] if ok and text.strip() else text
    try:
        found["mpi4py"] = version("mpi4py")
    except PackageNotFoundError:
        found["mpi4py"] = None
    return found


def cuda_kernels() -> tuple[str, str]:
    """("built", path) / ("missing", why) / ("broken", error) for libscalecom_cuda.so."""
    from horovod_scalecom.cuda import library_path, load_kernels
    path = library_path()
    if not path.exists():
        return "missing", str(path)
    ok, text = _attempt(load_kernels)
    return ("built", str(path)) if ok else ("broken", text)


if __name__ == "__main__":
    print(json.dumps(PROBES[sys.argv[1]]()))
