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

from gpu.kernels import cuda_ops  # noqa: E402


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return cuda_ops(tmp_path_factory.mktemp("cuda"))


def bits(x):
    """Bit patterns, every NaN as one: a float16 NaN widens to 0x7fc00000 or
    0x7fffffff depending on the converter (torch's own CPU paths differ by
    tensor size), and no NaN payload carries meaning here."""
    b = x.float().cpu().numpy().view(np.uint32).copy()
    b[np.isnan(x.float().cpu().numpy())] = 0x7FC00000
    return b


def inputs(numel, dtype, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "ties":          # few distinct magnitudes: ties everywhere
        m = rng.integers(-3, 4, numel).astype(np.float32)
        g = rng.integers(-3, 4, numel).astype(np.float32)
    elif kind == "zeros":
        m = np.zeros(numel, np.float32)
        g = np.zeros(numel, np.float32)
    else:
        m = rng.standard_normal(numel).astype(np.float32)
        g = rng.standard_normal(numel).astype(np.float32)
        if kind == "nonfinite" and numel > 10:
            g[[1, numel // 2, numel - 1]] = [np.nan, np.inf, -np.inf]
    return torch.from_numpy(m), torch.from_numpy(g).to(dtype)


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
    assert int(kept_gpu.item()) == kept_cpu
    dense = kernels.scatter(idx_gpu, values_gpu, numel)
    np.testing.assert_array_equal(bits(dense), bits(ops.scatter(idx_cpu, values_cpu, numel)))
