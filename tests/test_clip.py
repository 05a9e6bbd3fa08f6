"""The relative clip and the divergence guard: the reference's own rules,
the C++ core against the reference bit for bit, and the guard's reports."""

import math
import warnings

import numpy as np
import pytest
import torch

from horovod_scalecom.config import CLIP_RHO, DEFAULT_CLIP_FACTOR, ScaleComConfig
from horovod_scalecom.guard import SPIKE_FACTOR, DivergenceGuard
from horovod_scalecom.reference import HorovodPathSimulator
from horovod_scalecom.reference.clip import Levels, clip_step, relative_clip, sum_squares
from horovod_scalecom.reference.core import F32
from horovod_scalecom.torch._ops import ops


def loop_sum_squares(x):
    """The canonical order written as plain loops (slow; small inputs)."""
    x = [float(v) for v in np.asarray(x, F32)]
    total = 0.0
    for b in range(0, len(x), 4096):
        block = x[b:b + 4096]
        lanes = [0.0] * 8
        for i, v in enumerate(block):
            lanes[i % 8] += v * v
        part = 0.0
        for lane in lanes:
            part += lane
        total += part
    return total


@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 4095, 4096, 4097, 9000])
def test_sum_squares_follows_the_canonical_order(numel):
    rng = np.random.default_rng(numel)
    x = (rng.standard_normal(numel) * 10.0 ** rng.uniform(-4, 4, numel)).astype(F32)
    assert sum_squares(x) == loop_sum_squares(x)


@pytest.mark.parametrize("numel", [1, 9, 4097, 100_003, 1 << 20])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_core_clip_is_the_reference_bit_for_bit(numel, threads):
    rng = np.random.default_rng(numel + threads)
    torch.set_num_threads(threads)
    level = math.nan
    for step in range(6):
        # Norms that jump up and down, so the clip both acts and rests.
        x = (rng.standard_normal(numel) * [1, 5, 0.5, 40, 1, 3][step]).astype(F32)
        norm, new_level, scale = ops.clip_step(ops.sum_squares(torch.from_numpy(x)), level, 1.5,
                                               CLIP_RHO)
        ref = clip_step(sum_squares(x), level, 1.5, CLIP_RHO)
        assert (norm, new_level, scale) == (ref.norm, ref.level, float(ref.scale))
        clipped, _ = relative_clip(x, level, 1.5, CLIP_RHO)
        mine = torch.from_numpy(x) * scale if scale != 1.0 else torch.from_numpy(x)
        np.testing.assert_array_equal(mine.numpy(), clipped)
        level = new_level
        assert ops.sum_squares(torch.from_numpy(x)) == sum_squares(x)   # the guard's norm
    assert ops.clip_step(sum_squares(x), 2.0, 1.5, CLIP_RHO) == tuple(
        float(v) for v in vars(clip_step(sum_squares(x), 2.0, 1.5, CLIP_RHO)).values())


def test_clip_rules():
    first = clip_step(4.0, math.nan, 1.5, 0.99)            # norm 2: sets the level, no clip
    assert (first.norm, first.level, first.scale) == (2.0, 2.0, 1.0)
    calm = clip_step(9.0, 2.0, 1.5, 0.99)                  # norm 3 = the limit: untouched
    assert calm.scale == 1.0 and calm.level == 0.99 * 2.0 + 0.01 * 3.0
    spike = clip_step(100.0, 2.0, 1.5, 0.99)               # norm 10 > limit 3
    assert spike.scale == F32(3.0 / 10.0)
    assert spike.level == 0.99 * 2.0 + (1 - 0.99) * 3.0    # the level sees the clipped norm
    for bad in (math.inf, math.nan, 0.0):                  # gradient and level left alone
        step = clip_step(bad, 2.0, 1.5, 0.99)
        assert step.scale == 1.0 and step.level == 2.0
    off = clip_step(100.0, 2.0, 0.0, 0.99)                 # clip off: the level follows the norm
    assert off.scale == 1.0 and off.level == 0.99 * 2.0 + 0.01 * 10.0
    # A level can grow by at most rho + (1 - rho) * factor per step.
    level = 1.0
    for _ in range(100):
        level = clip_step(1e12, level, 1.5, 0.99).level
    assert level == pytest.approx(1.005 ** 100, rel=1e-9)


def test_horovod_path_clips_each_worker_before_its_memory():
    """HorovodPathSimulator with the clip = the clip by hand, then the simulator without it."""
    rng = np.random.default_rng(3)
    with_clip = HorovodPathSimulator(3, ScaleComConfig(ratio=0.1, beta=0.2, min_numel=0))
    by_hand = HorovodPathSimulator(3, ScaleComConfig(ratio=0.1, beta=0.2, min_numel=0,
                                               clip_factor=None))
    levels = Levels(3, DEFAULT_CLIP_FACTOR, CLIP_RHO)
    clipped_any = False
    for t in range(8):
        grads = [(rng.standard_normal(50) * 10.0 ** (t % 3) * (r + 1)).astype(F32) for r in range(3)]
        got = with_clip.step("w", grads)
        clipped = levels.apply("w", grads)
        clipped_any |= any(s.scale < 1 for s in levels.last["w"])
        want = by_hand.step("w", clipped)
        np.testing.assert_array_equal(got.outputs[0], want.outputs[0])
        for r in range(3):
            np.testing.assert_array_equal(with_clip.memory("w", r), by_hand.memory("w", r))
    assert clipped_any


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, math.inf, math.nan, True, "2"])
def test_clip_factor_is_checked(bad):
    with pytest.raises(ValueError, match="clip_factor"):
        ScaleComConfig(clip_factor=bad)


def test_guard_reports_the_first_event_of_each_tensor():
    guard = DivergenceGuard()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guard.gradient("fc1.weight", 3, 1, 2.0, 1.0)                       # calm
        guard.gradient("fc1.weight", 4, 1, SPIKE_FACTOR * 1.0 + 1, 1.0)    # spike
        guard.gradient("fc1.weight", 5, 1, math.nan, 1.0)                  # counted only
        guard.exchange("fc2.weight", 7, 1, math.inf)
        guard.memory("fc2.weight", 8, 1, 0)                                # nothing refused
        for step, norm in enumerate([1.0, 2.0, 1.5, 1.0 + SPIKE_FACTOR * 2]):
            guard.exchange("fc3.weight", step, 1, norm)                    # spike at step 3
    assert [str(w.message).split(":")[1].strip() for w in caught] == [
        "fc1.weight at step 4 on rank 1", "fc2.weight at step 7 on rank 1",
        "fc3.weight at step 3 on rank 1"]
    assert all(w.category is RuntimeWarning for w in caught)
    stats = guard.stats()
    assert stats["events"] == 4
    assert [(e["tensor"], e["kind"], e["step"]) for e in stats["first"]] == [
        ("fc1.weight", "gradient_spike", 4), ("fc2.weight", "nonfinite_exchange", 7),
        ("fc3.weight", "exchange_spike", 3)]
