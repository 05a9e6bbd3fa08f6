"""The path from torch tensors to the CUDA kernels' C ABI, without a GPU.

csrc/torch/cuda_ops.cc (torch.ops.scalecom's CUDA kernels: dtype codes, the
workspace protocol, the non-finite counter, the errors) and
horovod_scalecom.cuda (ctypes signatures, for the ring) are driven here
against tests/abi_double/host_abi.cc: the same C ABI implemented on host
memory by the CPU core, with cuda_ops.cc built over it for CPU tensors as
torch.ops.scalecom_host. A wrong argument order, type or dtype code shows up
as a result that differs from the CPU core's. The kernels themselves are
compared with the CPU core in tests/gpu (needs a GPU).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from horovod_scalecom import cuda  # noqa: E402
from horovod_scalecom.torch._ops import ops  # noqa: E402

from abi_double import build_for_workers, load_torch_host_ops  # noqa: E402
from kernel_cases import bits, check_ring_kernels, inputs  # noqa: E402


@pytest.fixture(scope="module")
def double_lib() -> Path:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return build_for_workers()


@pytest.fixture(scope="module")
def host_ops(double_lib):
    return load_torch_host_ops(double_lib)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "ties", "nonfinite"])
@pytest.mark.parametrize("numel,k", [(3, 1), (1000, 10), (50_001, 501)])
def test_cuda_ops_match_the_cpu_ops_bitwise(host_ops, dtype, kind, numel, k):
    m, g = inputs(numel, dtype, kind)
    idx_cpu = ops.select_topk(m, g, k)
    m_cpu = m.clone()
    values_cpu, kept_cpu = ops.gather_update_(m_cpu, g, idx_cpu, 0.1)

    m_dev = m.clone()
    idx = host_ops.select_topk(m_dev, g, k)
    assert idx.dtype == torch.int32 and idx.shape == (k,)
    np.testing.assert_array_equal(idx.numpy(), idx_cpu.numpy())
    values, kept = host_ops.gather_update_(m_dev, g, idx, 0.1)
    np.testing.assert_array_equal(bits(values), bits(values_cpu))
    np.testing.assert_array_equal(bits(m_dev), bits(m_cpu))
    assert kept.dtype == torch.int64 and kept.shape == (1,) and int(kept) == int(kept_cpu)
    if kind == "nonfinite":
        assert int(kept_cpu) > 0     # the counter is exercised, not only zero
    dense = host_ops.scatter(idx, values, numel)
    np.testing.assert_array_equal(bits(dense), bits(ops.scatter(idx_cpu, values_cpu, numel)))


def test_non_contiguous_gradient_is_read_in_logical_order(host_ops):
    m, g = inputs(4000, torch.float32, "normal")
    g2 = g.reshape(40, 100).t()         # non-contiguous view; its logical order is what counts
    idx = host_ops.select_topk(m, g2, 40)
    np.testing.assert_array_equal(idx.numpy(), ops.select_topk(m, g2.contiguous(), 40).numpy())


@pytest.mark.parametrize("bad, message", [
    (lambda m, g: (m.double(), g), "memory must be a contiguous 1-D float32"),
    (lambda m, g: (m, g.double()), "float32, float16 or bfloat16 gradients, got Double"),
    (lambda m, g: (m, g[:-1]), "gradient has 99 elements but its memory has 100"),
])
def test_bad_inputs_raise_before_the_kernels(host_ops, bad, message):
    m, g = inputs(100, torch.float32, "normal")
    with pytest.raises(ValueError, match=message):
        host_ops.select_topk(*bad(m, g), 5)


def test_bad_arguments_raise_the_cpu_ops_value_errors(host_ops):
    m, g = inputs(100, torch.float32, "normal")
    with pytest.raises(ValueError, match=r"select_topk: k=101 outside \[0, numel=100\]"):
        host_ops.select_topk(m, g, 101)
    with pytest.raises(ValueError, match=r"select_topk: k=101 outside \[0, numel=100\]"):
        ops.select_topk(m, g, 101)
    idx = torch.tensor([3, 7], dtype=torch.int32)
    for kernels in (host_ops, ops):
        with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\], got 1\.5"):
            kernels.gather_update_(m.clone(), g, idx, 1.5)
    with pytest.raises(ValueError, match="indices must be a contiguous 1-D int32"):
        host_ops.gather_update_(m, g, idx.long(), 0.1)


def test_kernel_errors_name_the_call(host_ops):
    # Indices out of order are the caller's fault, which the GPU kernels trust
    # and the host double refuses: the error the C ABI returns names the call.
    m, g = inputs(100, torch.float32, "normal")
    idx = torch.tensor([7, 3], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"scalecom CUDA gather_update\(numel=100, k=2\): "
                       r"invalid argument \(host double\) \(error 1\)"):
        host_ops.gather_update_(m, g, idx, 0.1)


@pytest.mark.parametrize("built", [True, False])
def test_gradients_reach_torch_ops_on_devices_that_have_kernels(monkeypatch, built):
    # One way in for every device: torch.ops.scalecom, whose dispatch picks the
    # kernels; a GPU gradient in a build without CUDA kernels, or a gradient on
    # any other device, is refused with a message, never sent to a CPU kernel.
    from types import SimpleNamespace
    from horovod_scalecom.torch import state

    monkeypatch.setattr(state, "CUDA_KERNELS", built)
    kernels = lambda device: state.ScaleComState.kernels(  # noqa: E731
        None, SimpleNamespace(device=torch.device(device)), "fc.weight")
    assert kernels("cpu") is ops
    if built:
        assert kernels("cuda:1") is ops
    else:
        with pytest.raises(RuntimeError, match=r"fc\.weight is on cuda:1, but this build .* no "
                           r"CUDA kernels.*nvcc"):
            kernels("cuda:1")
    with pytest.raises(RuntimeError, match="fc.weight is on meta; ScaleCom runs on CPU and CUDA"):
        kernels("meta")


def test_missing_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv(cuda.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(ImportError, match=r"CUDA kernels are not built .*nowhere\.so.*nvcc"):
        cuda.load_kernels()


def test_corrupt_or_foreign_library_is_refused(tmp_path):
    corrupt = tmp_path / "corrupt.so"
    corrupt.write_bytes(b"not an ELF file")
    with pytest.raises(ImportError, match="not a usable build"):
        cuda.CudaKernels(corrupt)
    # A real shared library without the ABI's symbols.
    foreign = Path(torch.__file__).parent / "lib" / "libc10.so"
    with pytest.raises(ImportError, match="not a usable build.*scalecom_cuda"):
        cuda.CudaKernels(foreign)


def test_load_kernels_uses_the_override_once(monkeypatch, double_lib):
    monkeypatch.setenv(cuda.LIBRARY_ENV, str(double_lib))
    assert cuda.load_kernels() is cuda.load_kernels()
    assert cuda.load_kernels().path == double_lib


# -- the compressor's GPU path under mpirun ------------------------------------------

def _horovod_torch_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("horovod.torch") is not None


needs_horovod = pytest.mark.skipif(not _horovod_torch_installed(),
                                   reason="horovod.torch is not installed")


@needs_horovod
def test_compressor_through_the_c_abi_matches_reference(double_lib, tmp_path):
    # ScaleCom's CUDA branch (device-side non-finite counters turned into ints
    # only by stats(), workspaces, dtype codes) with every kernel call going
    # through the C ABI's host double: bitwise the reference, counts included.
    from compressor_check import check
    from horovod_scalecom.config import ScaleComConfig
    from mpi import run_mpi

    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6", "--inject",
                  "--kernels-lib", str(double_lib), timeout=300).check_ok()
    results = check(job, 2, 6, cfg, exact=True, inject=True)
    counts = {(r, t): int(results[r][f"nonfinite/{t}"]) for r in range(2) for t in range(6)}
    assert counts[(1, 2)] > 0 and sum(counts.values()) == counts[(1, 2)], counts


@needs_horovod
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compressor_on_cuda_gradients_matches_reference(dtype, tmp_path):
    # Two ranks on the first GPU (enough for the arithmetic): memory on the
    # device, the real kernels, Horovod moving the indices and values.
    from compressor_check import check, reference
    from horovod_scalecom.config import ScaleComConfig
    from mpi import run_mpi

    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  "--device", "cuda", "--dtype", dtype, timeout=300).check_ok()
    if dtype == "float32":
        check(job, 2, 6, cfg, exact=True)
        return
    tdtype = getattr(torch, dtype)
    cast = lambda g: torch.from_numpy(g).to(tdtype).float().numpy()  # noqa: E731
    expected, sim = reference(2, 6, cfg, cast=cast)
    res = job.result(0)
    for step in range(6):
        for name, ref in expected[step].items():
            ref = torch.from_numpy(ref).to(tdtype).float().numpy()
            np.testing.assert_array_equal(res[f"out/{step}/{name}"].reshape(-1), ref)


def test_the_library_setup_py_built_loads():
    # Built where nvcc and a CUDA build of torch or TensorFlow exist (here: TensorFlow's
    # pip wheel is one). Without a GPU only the queries that touch no device can run.
    path = cuda.library_path()
    if not path.exists():
        pytest.skip(f"setup.py built no {cuda.LIBRARY_NAME} here (no nvcc or no CUDA framework)")
    kernels = cuda.CudaKernels(path)
    table = kernels.addresses()
    assert set(table) == {*cuda.SIGNATURES, "error_string"} and all(table.values())
    assert kernels.error_string(0) == "no error"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "ties", "nonfinite"])
def test_ring_kernels_check_runs_on_the_double(double_lib, dtype, kind):
    # The check tests/gpu runs on the real kernels, here on the double: the
    # argument orders of cuda.py's signatures, and the check itself.
    check_ring_kernels(cuda.CudaKernels(double_lib)._lib, "cpu", dtype, kind)
