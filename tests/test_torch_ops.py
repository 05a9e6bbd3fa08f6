"""The C++ core through torch.ops.scalecom against the NumPy reference, in one process."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from horovod_scalecom.config import num_selected  # noqa: E402
from horovod_scalecom.reference import core  # noqa: E402
from horovod_scalecom.torch._ops import ops  # noqa: E402

F32 = np.float32


def bits(x):
    return np.asarray(x, dtype=F32).view(np.uint32)


def select(m, g, k, threads):
    torch.set_num_threads(threads)
    return ops.select_topk(torch.from_numpy(m), torch.from_numpy(g), k).numpy()


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("numel,k", [(1, 1), (2, 1), (17, 17), (1000, 1), (1000, 10),
                                     (300_001, 3001), (1 << 20, 1 << 10), (1 << 20, 1)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_select_matches_reference(numel, k, threads):
    rng = np.random.default_rng(numel + k)
    m = rng.standard_normal(numel).astype(F32)
    g = rng.standard_normal(numel).astype(F32)
    expected = core.topk_indices(core.accumulate(m, g), k)
    np.testing.assert_array_equal(select(m, g, k, threads), expected)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_select_ties_lower_index_across_thread_blocks(threads):
    numel = 400_000
    m = np.zeros(numel, F32)
    g = np.zeros(numel, F32)
    g[::1000] = 1.0                 # 400 equal magnitudes spread over every block
    g[-5:] = -2.0                   # larger ones at the very end
    for k in (1, 5, 6, 50, 405, 1000):
        expected = core.topk_indices(g, k)
        np.testing.assert_array_equal(select(m, g, k, threads), expected)


def _large_inputs(numel, rng):
    """Distributions for the sampled threshold (numel >= 65536) and the cases
    where it must give up: heavy ties, a ramp, fewer nonzeros than k."""
    normal = rng.standard_normal(numel).astype(F32)
    yield "normal", normal
    yield "heavy tail", rng.standard_cauchy(numel).astype(F32)
    yield "quantized ties", (np.round(normal * 2) / 2).astype(F32)
    yield "ramp", np.arange(numel, dtype=F32) - numel / 3
    sparse = np.zeros(numel, F32)
    sparse[rng.choice(numel, numel // 200, replace=False)] = 1 + rng.random(numel // 200)
    yield "sparse", sparse
    spiked = normal.copy()
    spiked[rng.choice(numel, 40, replace=False)] = [np.nan, np.inf, -np.inf, 1e30] * 10
    yield "non-finite", spiked


@pytest.mark.parametrize("numel", [1 << 16, 1_000_003, 1 << 22])
@pytest.mark.parametrize("threads", [1, 3])
def test_select_large_tensors_every_distribution(numel, threads):
    rng = np.random.default_rng(numel)
    m = (rng.standard_normal(numel) * 0.1).astype(F32)
    for name, g in _large_inputs(numel, rng):
        for k in (1, 7, numel // 1000, numel // 100, numel // 100 + 1, numel // 9):
            expected = core.topk_indices(core.accumulate(m, g), k)
            got = select(m, g, k, threads)
            np.testing.assert_array_equal(got, expected, err_msg=f"{name}, k={k}")


def test_select_all_zero_and_nan_inf():
    z = np.zeros(300_000, F32)          # one bin holds everything: all candidates
    for k in (10, 150_000, 300_000):
        np.testing.assert_array_equal(select(z, z, k, 3), np.arange(k))
    g = np.ones(1000, F32)
    g[[3, 500]] = [np.nan, -np.inf]
    np.testing.assert_array_equal(select(np.zeros(1000, F32), g, 2, 1), [3, 500])


@pytest.mark.parametrize("numel,k", [(10, 3), (1 << 20, 1000), (200_003, 1)])
@pytest.mark.parametrize("beta", [0.1, 1.0, 0.3])
def test_gather_update_bitwise(numel, k, beta):
    rng = np.random.default_rng(7)
    m = rng.standard_normal(numel).astype(F32)
    g = rng.standard_normal(numel).astype(F32)
    idx = np.sort(rng.choice(numel, k, replace=False)).astype(np.int32)
    for threads in (1, 3):
        torch.set_num_threads(threads)
        mt = torch.from_numpy(m.copy())
        c, kept = ops.gather_update_(mt, torch.from_numpy(g), torch.from_numpy(idx), beta)
        c = c.numpy()
        assert kept.dtype == torch.int64 and kept.shape == (1,) and int(kept) == 0
        c_ref, m_ref = core.gather_and_update(m, g, idx, beta)
        np.testing.assert_array_equal(bits(c), bits(c_ref))
        np.testing.assert_array_equal(bits(mt.numpy()), bits(m_ref))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_widen_to_float32(dtype):
    rng = np.random.default_rng(8)
    m = rng.standard_normal(5000).astype(F32)
    g = torch.from_numpy(rng.standard_normal(5000).astype(F32)).to(dtype)
    g32 = g.float().numpy()
    idx = core.topk_indices(core.accumulate(m, g32), 50)
    np.testing.assert_array_equal(ops.select_topk(torch.from_numpy(m), g, 50).numpy(), idx)
    mt = torch.from_numpy(m.copy())
    c = ops.gather_update_(mt, g, torch.from_numpy(idx), 0.1)[0].numpy()
    c_ref, m_ref = core.gather_and_update(m, g32, idx, 0.1)
    np.testing.assert_array_equal(bits(c), bits(c_ref))
    np.testing.assert_array_equal(bits(mt.numpy()), bits(m_ref))


def test_scatter():
    idx = torch.tensor([1, 4], dtype=torch.int32)
    out = ops.scatter(idx, torch.tensor([2.0, -3.0]), 6)
    np.testing.assert_array_equal(out.numpy(), [0, 2, 0, 0, -3, 0])


@pytest.mark.parametrize("numel,ratio", [(1, 0.01), (100, 1.0), (101, 0.01), (10**7, 1e-9),
                                         (1001, 0.001), (0, 0.5), (12345, 0.0137)])
def test_k_agrees_with_python(numel, ratio):
    assert ops.num_selected(numel, ratio) == num_selected(numel, ratio)


def test_bad_inputs_raise_clear_errors():
    m = torch.zeros(10)
    g = torch.zeros(10)
    with pytest.raises(ValueError, match="ascending"):
        ops.gather_update_(m, g, torch.tensor([3, 2], dtype=torch.int32), 0.1)
    with pytest.raises(ValueError, match="in \\[0, 10\\)"):
        ops.gather_update_(m, g, torch.tensor([1, 10], dtype=torch.int32), 0.1)
    with pytest.raises(ValueError, match="k=11"):
        ops.select_topk(m, g, 11)
    with pytest.raises(ValueError, match="beta"):
        ops.gather_update_(m, g, torch.tensor([1], dtype=torch.int32), 0.0)
    with pytest.raises(RuntimeError, match="elements but its memory"):
        ops.gather_update_(m, torch.zeros(9), torch.tensor([1], dtype=torch.int32), 0.1)
    with pytest.raises(RuntimeError, match="floating point"):
        ops.select_topk(m, torch.zeros(10, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="ratio"):
        ops.num_selected(10, 0.0)


@pytest.mark.parametrize("threads", [1, 3])
def test_nonfinite_gradients_never_enter_the_memory(threads):
    torch.set_num_threads(threads)
    numel = 300_000
    rng = np.random.default_rng(9)
    m = rng.standard_normal(numel).astype(F32)
    g = rng.standard_normal(numel).astype(F32)
    g[[5, 70_000, 250_000]] = [np.nan, np.inf, -np.inf]
    g[123] = 3e38                     # finite, but m + beta * g overflows at beta 1
    m[123] = 3e38
    idx = np.array([5, 10, 123, 299_999], dtype=np.int32)   # NaN at 5 is selected
    mt = torch.from_numpy(m.copy())
    c, kept = ops.gather_update_(mt, torch.from_numpy(g), torch.from_numpy(idx), 1.0)
    c_ref, m_ref = core.gather_and_update(m, g, idx, 1.0)
    np.testing.assert_array_equal(bits(c.numpy()), bits(c_ref))
    np.testing.assert_array_equal(bits(mt.numpy()), bits(m_ref))
    assert np.isnan(c.numpy()[0]), "a selected NaN shows in the values"
    assert np.isfinite(mt.numpy()).all(), "the memory stays finite"
    assert int(kept) == 2                 # the two infinities off the index set
    np.testing.assert_array_equal(mt.numpy()[[70_000, 250_000]], m[[70_000, 250_000]])


def test_clip_before_exchange_bounds_each_gradient_before_accumulation():
    from horovod_scalecom.torch import clip_before_exchange
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    handles = clip_before_exchange(model, max_norm=0.5)
    x = torch.randn(32, 8) * 100                     # large gradients
    model(x).pow(2).sum().backward()
    clipped = [p.grad.clone() for p in model.parameters()]
    for h in handles:
        h.remove()
    model.zero_grad()
    model(x).pow(2).sum().backward()
    for c, p in zip(clipped, model.parameters()):
        assert torch.linalg.vector_norm(c) <= 0.5 * (1 + 1e-5)
        assert torch.linalg.vector_norm(p.grad) > 0.5        # it did need clipping
        cos = torch.nn.functional.cosine_similarity(c.flatten(), p.grad.flatten(), dim=0)
        assert cos > 0.9999                                  # direction kept
    small = torch.nn.Linear(4, 1)
    clip_before_exchange(small, max_norm=1e6)
    small(torch.ones(1, 4)).sum().backward()
    np.testing.assert_array_equal(small.weight.grad.numpy(), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="max_norm"):
        clip_before_exchange(small, max_norm=0)
