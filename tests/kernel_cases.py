"""Inputs, a bitwise comparison and the ring kernels' check, shared by the
tests of the kernels' C ABI: tests/test_cuda_abi.py (its host double) and
tests/gpu/test_kernels.py (the GPU)."""

import ctypes

import numpy as np
import torch


def bits(x: torch.Tensor) -> np.ndarray:
    """Bit patterns, every NaN as one: a float16 NaN widens to 0x7fc00000 or
    0x7fffffff depending on the converter (torch's own CPU paths differ by
    tensor size), and no NaN payload carries meaning here."""
    values = x.float().cpu().numpy()
    b = values.view(np.uint32).copy()
    b[np.isnan(values)] = 0x7FC00000
    return b


def inputs(numel: int, dtype: torch.dtype, kind: str, seed: int = 0):
    """(memory, gradient) of one kind: normal, ties (few distinct magnitudes),
    zeros, or nonfinite (NaN, +Inf, -Inf every 40 entries: more of them than
    k, so some fall outside the selection, where the memory must refuse them)."""
    rng = np.random.default_rng(seed)
    if kind == "ties":
        m = rng.integers(-3, 4, numel).astype(np.float32)
        g = rng.integers(-3, 4, numel).astype(np.float32)
    elif kind == "zeros":
        m = np.zeros(numel, np.float32)
        g = np.zeros(numel, np.float32)
    else:
        m = rng.standard_normal(numel).astype(np.float32)
        g = rng.standard_normal(numel).astype(np.float32)
        if kind == "nonfinite":
            g[1::40] = np.nan
            g[2::40] = np.inf
            g[3::40] = -np.inf
    return torch.from_numpy(m), torch.from_numpy(g).to(dtype)


def check_ring_kernels(lib, device: str, dtype: torch.dtype, kind: str) -> None:
    """The ring engine's kernels (ring_select, ring_accumulate, ring_divide)
    through the ctypes library `lib` (horovod_scalecom.cuda's signatures) on
    `device`, against the CPU core and float32 arithmetic in NumPy, bitwise:
    a chunk that does not start at 0, a received index set to add into, and
    the two kinds of bad index set (outside the chunk, not ascending)."""
    from horovod_scalecom.cuda import GRAD_TYPES
    from horovod_scalecom.torch._ops import ops

    numel, lo, hi, k = 10_007, 2_500, 7_503, 50
    m, g = inputs(numel, dtype, kind, seed=3)
    dev = torch.device(device)
    md, gd = m.to(dev), g.to(dev)
    gtype = GRAD_TYPES[str(dtype).removeprefix("torch.")]
    stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0

    def call(name, *args):
        code = getattr(lib, f"scalecom_cuda_{name}")(*args)
        assert code == 0, f"{name}: {lib.scalecom_cuda_error_string(code).decode()}"

    size = ctypes.c_size_t()
    call("select_workspace_bytes", hi - lo, k, ctypes.byref(size))
    work = torch.empty(size.value, dtype=torch.uint8, device=dev)
    idx = torch.empty(k, dtype=torch.int32, device=dev)
    values = torch.empty(k, dtype=torch.float32, device=dev)
    call("ring_select", md.data_ptr(), gd.data_ptr(), gtype, lo, hi, k, idx.data_ptr(),
         values.data_ptr(), work.data_ptr(), size.value, stream)
    want_idx = ops.select_topk(m[lo:hi].contiguous(), g[lo:hi].contiguous(), k).numpy() + lo
    np.testing.assert_array_equal(idx.cpu().numpy(), want_idx)
    p = m.numpy() + g.float().numpy()                       # float32, one rounding each
    np.testing.assert_array_equal(bits(values), bits(torch.from_numpy(p[want_idx])))

    # A hop: another rank's index set and partial sums, this rank's m + g added.
    rng = np.random.default_rng(4)
    got = np.sort(rng.choice(np.arange(lo, hi), k, replace=False)).astype(np.int32)
    partial = rng.standard_normal(k).astype(np.float32)
    sums = torch.from_numpy(partial.copy()).to(dev)
    bad = torch.zeros(1, dtype=torch.int32, device=dev)
    call("ring_accumulate", md.data_ptr(), gd.data_ptr(), gtype, lo, hi,
         torch.from_numpy(got).to(dev).data_ptr(), k, sums.data_ptr(), bad.data_ptr(), stream)
    np.testing.assert_array_equal(bits(sums), bits(torch.from_numpy(partial + p[got])))
    assert int(bad.item()) == 0
    for broken in (np.r_[got[:-1], hi], np.r_[got[1:2], got[1:]]):   # outside; not ascending
        before = sums.clone()
        call("ring_accumulate", md.data_ptr(), gd.data_ptr(), gtype, lo, hi,
             torch.from_numpy(broken.astype(np.int32)).to(dev).data_ptr(), k, sums.data_ptr(),
             bad.data_ptr(), stream)
        assert int(bad.item()) == 1
        bad.zero_()
        changed = (bits(sums) != bits(before))
        assert not changed[-1 if broken[-1] == hi else 1]    # the bad entry is not read

    means = torch.empty(k, dtype=torch.float32, device=dev)
    call("ring_divide", sums.data_ptr(), k, ctypes.c_float(3.0), means.data_ptr(),
         stream)
    want = sums.cpu().numpy() / np.float32(3.0)
    np.testing.assert_array_equal(bits(means), bits(torch.from_numpy(want)))
