"""The CUDA kernels against the CPU core, bit for bit (needs a GPU; skips here).

Indices equal, values, memory and the non-finite count bitwise equal to
torch.ops.scalecom on the CPU, itself bitwise equal to the NumPy reference.
"""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device (or a CPU-only torch)", allow_module_level=True)
if shutil.which("nvcc") is None:
    pytest.skip("nvcc is not installed", allow_module_level=True)

from horovod_scalecom.torch._ops import ops  # noqa: E402

from gpu.kernels import library, torch_ops  # noqa: E402
from kernel_cases import bits, check_ring_kernels, inputs  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    return torch_ops()      # the same ops, dispatched to the CUDA kernels by the tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("numel,k", [(1, 1), (17, 17), (1000, 10), (100_003, 1),
                                     (1 << 20, 10_486), (3_000_000, 30_000)])
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "nonfinite"])
def test_step_matches_cpu_core_bitwise(kernels, dtype, numel, k, kind):
    m, g = inputs(numel, dtype, kind)
    idx_cpu = ops.select_topk(m, g, k)
    m_cpu = m.clone()
    values_cpu, kept_cpu = ops.gather_update_(m_cpu, g, idx_cpu, 0.1)
    m_gpu, g_gpu = m.cuda(), g.cuda()
    idx_gpu = kernels.select_topk(m_gpu, g_gpu, k)
    np.testing.assert_array_equal(idx_gpu.cpu().numpy(), idx_cpu.numpy())
    values_gpu, kept_gpu = kernels.gather_update_(m_gpu, g_gpu, idx_gpu, 0.1)
    np.testing.assert_array_equal(bits(values_gpu), bits(values_cpu))
    np.testing.assert_array_equal(bits(m_gpu), bits(m_cpu))
    assert kept_gpu.is_cuda and int(kept_gpu.item()) == int(kept_cpu)
    dense = kernels.scatter(idx_gpu, values_gpu, numel)
    np.testing.assert_array_equal(bits(dense), bits(ops.scatter(idx_cpu, values_cpu, numel)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "ties", "nonfinite"])
def test_ring_kernels_match_cpu_bitwise(tmp_path_factory, dtype, kind):
    check_ring_kernels(library(tmp_path_factory.mktemp("ring"))._lib, "cuda", dtype, kind)
