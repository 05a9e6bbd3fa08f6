"""Every .cu file compiles with nvcc for sm_80 and sm_90, warnings as errors,
and the shared library exports the C ABI (here, where there is no GPU); the
torch and TensorFlow op libraries register GPU kernels exactly beside it."""

import os
import re
import shutil
import subprocess

import pytest

from horovod_scalecom.cuda_build import ROOT, SOURCES, nvcc_command

SYMBOLS = ("scalecom_cuda_select_workspace_bytes", "scalecom_cuda_select_topk",
           "scalecom_cuda_gather_update_workspace_bytes", "scalecom_cuda_gather_update",
           "scalecom_cuda_scatter", "scalecom_cuda_error_string")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_sources_compile_for_sm80_and_sm90(tmp_path):
    assert SOURCES, "no .cu files found"
    lib = tmp_path / "libscalecom_cuda.so"
    proc = subprocess.run(nvcc_command(lib), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    # The fat binary names the architectures of its device code.
    embedded = set(re.findall(rb"sm_[0-9]+", lib.read_bytes()))
    assert {b"sm_80", b"sm_90"} <= embedded, embedded
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                              text=True, check=True).stdout
    for name in SYMBOLS:
        assert f" T {name}" in exported, name


def test_tensorflow_ops_have_gpu_kernels_exactly_when_the_cuda_library_is_built():
    # setup.py compiles csrc/tensorflow/gpu_kernels.cc into the op library only
    # beside libscalecom_cuda.so (which it links); TensorFlow's kernel registry,
    # read in a process of its own, must show GPU kernels with host-memory indices.
    import importlib.util
    import sys

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    from horovod_scalecom import cuda
    built = (cuda.library_path().parent / cuda.LIBRARY_NAME).exists()
    probe = (
        "from horovod_scalecom.tensorflow._ops import ops\n"
        "from tensorflow.python.framework import kernels\n"
        "for op in ('ScalecomSelectTopk', 'ScalecomGatherUpdate', 'ScalecomScatter'):\n"
        "    for k in kernels.get_registered_kernels_for_op(op).kernel:\n"
        "        print(op, k.device_type, ','.join(k.host_memory_arg))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop(cuda.LIBRARY_ENV, None)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300, check=True).stdout.split("\n")
    for op in ("ScalecomSelectTopk", "ScalecomGatherUpdate", "ScalecomScatter"):
        assert f"{op} CPU " in out
        assert (f"{op} GPU indices" in out) == built, (op, built, out)


def test_torch_ops_have_cuda_kernels_exactly_when_the_cuda_library_is_built():
    # setup.py compiles csrc/torch/cuda_ops.cc into the torch op library only
    # beside libscalecom_cuda.so: torch's dispatcher must then hold a CUDA
    # kernel for each tensor op (a CPU torch too: the key exists there), and
    # CUDA_KERNELS must say so.
    torch = pytest.importorskip("torch")
    from horovod_scalecom import cuda
    from horovod_scalecom.torch._ops import CUDA_KERNELS

    built = (cuda.library_path().parent / cuda.LIBRARY_NAME).exists()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for op in ("select_topk", "gather_update_", "scatter"):
        assert has(f"scalecom::{op}", "CPU"), op
        assert has(f"scalecom::{op}", "CUDA") == built, (op, built)
    assert CUDA_KERNELS == built
