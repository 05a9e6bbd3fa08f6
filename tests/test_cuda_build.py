"""Every .cu file compiles with nvcc for sm_80 and sm_90, warnings as errors,
and the shared library exports the C ABI (here, where there is no GPU)."""

import re
import shutil
import subprocess

import pytest

from gpu.kernels import SOURCES, nvcc_command

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
