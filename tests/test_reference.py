"""The NumPy oracle against brute force and against the algebra of docs/algorithm.md."""

import math

import numpy as np
import pytest

from horovod_scalecom import bytes_model
from horovod_scalecom.config import AGREED, ScaleComConfig, disagreement, num_selected
from horovod_scalecom.reference import (
    HorovodPathSimulator, RingSimulator, accumulate, gather_and_update, scatter, topk_indices)
from horovod_scalecom.reference.horovod_path import allreduce_mean
from horovod_scalecom.schedule import chunk_bounds, chunk_owner, leader, owned_chunk

F32 = np.float32


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def brute_topk(p, k):
    """Sort by (|p| descending, index ascending) with Python's sort."""
    order = sorted(range(len(p)), key=lambda j: (-abs(float(p[j])), j))
    return np.array(sorted(order[:k]), dtype=np.int32)


# --- k and the schedules ----------------------------------------------------

@pytest.mark.parametrize("numel,ratio,k", [
    (1, 0.01, 1), (1, 1.0, 1), (100, 1.0, 100), (100, 0.01, 1), (101, 0.01, 2),
    (10**6, 1e-9, 1), (1000, 0.001, 1), (1001, 0.001, 2), (0, 0.5, 0), (7, 0.5, 4)])
def test_num_selected(numel, ratio, k):
    assert num_selected(numel, ratio) == k


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 0.0}, "ratio"), ({"ratio": -0.1}, "ratio"), ({"ratio": 1.5}, "ratio"),
    ({"ratio": float("nan")}, "ratio"), ({"beta": 0.0}, "beta"), ({"beta": 1.01}, "beta"),
    ({"warmup_steps": -1}, "warmup_steps"), ({"min_numel": 2.5}, "min_numel"),
    ({"clip_norm": 0}, "clip_norm must be a positive number"),
    ({"clip_norm": True}, "clip_norm must be a positive number"),
    ({"share_timeout": 0}, "share_timeout must be a positive number"),
    ({"share_timeout": -5.0}, "share_timeout must be a positive number")])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaleComConfig(**kwargs)


def test_config_stagger_leaders_is_a_bool():
    with pytest.raises(TypeError, match="stagger_leaders must be True or False"):
        ScaleComConfig(stagger_leaders="yes")


def test_policy_dense_rule_and_agreement_row():
    # One rule for every frontend: the dtype by name, warm-up per step.
    cfg = ScaleComConfig(beta=0.1, warmup_steps=2, min_numel=10, clip_norm=5.0, clip_factor=None)
    assert not cfg.always_dense(10, np.float32) and not cfg.always_dense(10, "bfloat16")
    assert cfg.always_dense(9, np.float32) and cfg.always_dense(None, np.float32)
    assert cfg.always_dense(100, np.float64) and cfg.always_dense(100, np.int32)
    assert cfg.goes_dense(1, 100, np.float16) and not cfg.goes_dense(2, 100, np.float16)
    assert dict(zip(AGREED, cfg.agreement_row())) == {
        "ratio": 0.01, "beta": 0.1, "warmup_steps": 2, "min_numel": 10,
        "stagger_leaders": 0.0, "clip_norm": 5.0, "clip_factor": 0.0}


def test_disagreement_names_only_the_knobs_that_differ():
    # Both frontends' agreement checks word their error with it.
    names = ("ratio", "beta", "clip_norm")
    assert disagreement(names, np.array([[0.01, 0.1, 5.0]] * 3)) is None
    every = np.array([[0.01, 0.1, 5.0], [0.01, 0.3, 0.0], [0.01, 0.1, 5.0]])
    assert disagreement(names, every) == ("beta, clip_norm (rank 0: beta 0.1, clip_norm 5; "
                                          "rank 1: beta 0.3, clip_norm 0; rank 2: beta 0.1, "
                                          "clip_norm 5)")


def test_decay_is_float32_one_minus_beta():
    cfg = ScaleComConfig(beta=0.1)
    assert cfg.decay32 == F32(F32(1) - F32(0.1))
    assert cfg.decay32.dtype == np.float32


def test_leader_rotates_through_every_rank():
    n = 5
    for offset in range(3):
        leaders = [leader(t, offset, n) for t in range(n)]
        assert sorted(leaders) == list(range(n))
        assert leaders[0] == offset % n
    assert [leader(t, 0, 3) for t in range(6)] == [0, 1, 2, 0, 1, 2]


def test_chunk_owners_rotate_and_partition():
    n = 4
    for t in range(2 * n):
        owners = [chunk_owner(j, t, n) for j in range(n)]
        assert sorted(owners) == list(range(n)), "each rank owns exactly one chunk"
        for r in range(n):
            assert chunk_owner(owned_chunk(r, t, n), t, n) == r
    assert [chunk_owner(0, t, 3) for t in range(4)] == [0, 1, 2, 0]


@pytest.mark.parametrize("numel,n", [(10, 3), (3, 5), (0, 2), (100, 7), (8, 8)])
def test_chunk_bounds_match_array_split(numel, n):
    bounds = chunk_bounds(numel, n)
    parts = np.array_split(np.arange(numel), n)
    assert [len(p) for p in parts] == list(np.diff(bounds))


# --- one worker's arithmetic --------------------------------------------------

def test_topk_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    p = rng.integers(-3, 4, size=200).astype(F32)   # many equal magnitudes
    p[5] = -0.0
    for k in (1, 7, 50, 199, 200):
        np.testing.assert_array_equal(topk_indices(p, k), brute_topk(p, k))


def test_topk_ties_go_to_lower_index():
    p = np.array([1, -2, 2, 2, -2, 1], dtype=F32)
    np.testing.assert_array_equal(topk_indices(p, 2), [1, 2])
    np.testing.assert_array_equal(topk_indices(p, 3), [1, 2, 3])


def test_topk_nan_ranks_above_inf():
    p = np.array([1.0, np.inf, np.nan, -5.0], dtype=F32)
    np.testing.assert_array_equal(topk_indices(p, 1), [2])
    np.testing.assert_array_equal(topk_indices(p, 2), [1, 2])


def test_memory_update_elementwise():
    rng = np.random.default_rng(2)
    m, g = rand(rng, 50), rand(rng, 50)
    beta = 0.3
    idx = np.array([0, 3, 17, 49], dtype=np.int32)
    c, m_new = gather_and_update(m, g, idx, beta)
    b32, d32 = F32(beta), F32(F32(1) - F32(beta))
    for j in range(50):
        if j in idx:
            assert m_new[j] == d32 * m[j]
        else:
            assert m_new[j] == m[j] + b32 * g[j]
    np.testing.assert_array_equal(c, (m + g)[idx])
    # The same update written as the low-pass filter of docs/algorithm.md.
    p = m + g
    filtered = (1 - beta) * m.astype(np.float64) + beta * (p - scatter(idx, c, 50))
    np.testing.assert_allclose(m_new, filtered, rtol=1e-5, atol=1e-6)


def test_beta_one_is_classic_error_feedback():
    """beta = 1: memory becomes exactly the residue p - scatter(I, p[I])."""
    rng = np.random.default_rng(3)
    m = np.zeros(64, F32)
    for _ in range(10):
        g = rand(rng, 64)
        p = accumulate(m, g)
        idx = topk_indices(p, 6)
        c, m = gather_and_update(m, g, idx, 1.0)
        residue = p.copy()
        residue[idx] = 0
        np.testing.assert_array_equal(m, residue)
        np.testing.assert_array_equal(c, p[idx])


def test_cltk_commutes_with_the_mean():
    """mean_r CLT-k(p_r) == CLT-k(mean_r p_r) for a shared index set."""
    rng = np.random.default_rng(4)
    ps = [rand(rng, 300).astype(np.float64) for _ in range(4)]
    idx = topk_indices(ps[1].astype(F32), 20)
    lhs = np.mean([scatter(idx, p[idx], 300).astype(np.float64) for p in ps], axis=0)
    mean_p = np.mean(ps, axis=0)
    rhs = np.zeros(300)
    rhs[idx] = mean_p[idx]
    np.testing.assert_allclose(lhs, rhs, rtol=1e-6, atol=1e-7)


# --- the Horovod path -----------------------------------------------------------------

@pytest.mark.parametrize("stagger", [False, True], ids=["one-leader", "staggered"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_horovod_path_matches_step_by_step_spec(n, stagger):
    rng = np.random.default_rng(10 + n)
    cfg = ScaleComConfig(ratio=0.05, beta=0.2, min_numel=0, clip_factor=None)
    sim = HorovodPathSimulator(n, cfg, stagger=stagger)
    shapes = {"w1": (40,), "w2": (7, 9)}
    mem = {name: [np.zeros(int(np.prod(s)), F32) for _ in range(n)] for name, s in shapes.items()}
    for t in range(6):
        for offset, (name, shape) in enumerate(shapes.items()):
            grads = [rand(rng, *shape) for _ in range(n)]
            res = sim.step(name, grads)
            lead = (t + (offset if stagger else 0)) % n
            assert res.leader == lead
            numel = int(np.prod(shape))
            k = math.ceil(0.05 * numel)
            p_lead = mem[name][lead] + grads[lead].reshape(-1)
            idx = brute_topk(p_lead, k)
            np.testing.assert_array_equal(res.indices, idx)
            cs = []
            for r in range(n):
                p = mem[name][r] + grads[r].reshape(-1)
                cs.append(p[idx])
                keep = np.ones(numel, bool)
                keep[idx] = False
                mem[name][r][keep] += F32(0.2) * grads[r].reshape(-1)[keep]
                mem[name][r][idx] *= F32(F32(1) - F32(0.2))
                np.testing.assert_array_equal(sim.memory(name, r), mem[name][r])
            expected = scatter(idx, allreduce_mean(cs), numel)
            for out in res.outputs:
                np.testing.assert_array_equal(out, expected)


def test_horovod_path_dense_cases_leave_memory_alone():
    rng = np.random.default_rng(5)
    sim = HorovodPathSimulator(2, ScaleComConfig(ratio=0.1, warmup_steps=2, min_numel=10))
    for _ in range(2):
        grads = [rand(rng, 20) for _ in range(2)]
        res = sim.step("big", grads)
        assert res.indices is None
        np.testing.assert_array_equal(res.outputs[0], (grads[0] + grads[1]) / F32(2))
        np.testing.assert_array_equal(sim.memory("big", 0), np.zeros(20, F32))
    assert sim.step("big", [rand(rng, 20) for _ in range(2)]).indices is not None
    small = sim.step("small", [rand(rng, 9) for _ in range(2)])
    assert small.indices is None
    ints = sim.step("ints", [np.arange(2000), np.arange(2000)])
    assert ints.indices is None


def test_horovod_path_ratio_one_is_dense_allreduce():
    rng = np.random.default_rng(6)
    sim = HorovodPathSimulator(3, ScaleComConfig(ratio=1.0, beta=1.0, min_numel=0, clip_factor=None))
    for _ in range(4):
        grads = [rand(rng, 33) for _ in range(3)]
        res = sim.step("w", grads)
        np.testing.assert_array_equal(res.outputs[0], allreduce_mean(grads))
        np.testing.assert_array_equal(sim.memory("w", 0), np.zeros(33, F32))


# --- the ring ---------------------------------------------------------------------

def brute_ring(mems, grads, t, ratio, beta):
    """Chunk by chunk with Python lists and the brute-force top-k."""
    n, numel = len(grads), grads[0].size
    ps = [m + g for m, g in zip(mems, grads)]
    out = np.zeros(numel, F32)
    union = []
    for j, part in enumerate(np.array_split(np.arange(numel), n)):
        if part.size == 0:
            continue
        owner = (j + t) % n
        k_j = math.ceil(ratio * part.size)
        local = brute_topk(ps[owner][part], k_j)
        idx = part[local]
        acc = ps[owner][idx].copy()
        for h in range(1, n):
            acc = acc + ps[(owner + h) % n][idx]
        out[idx] = acc / F32(n)
        union.extend(idx.tolist())
    new = [gather_and_update(m, g, np.array(union, np.int32), beta)[1] for m, g in zip(mems, grads)]
    return out, new


@pytest.mark.parametrize("n,numel", [(2, 50), (3, 50), (5, 101), (4, 3), (7, 20), (3, 1)])
def test_ring_matches_brute_force(n, numel):
    rng = np.random.default_rng(n * 100 + numel)
    ratio, beta = 0.1, 0.25
    sim = RingSimulator(n, ScaleComConfig(ratio=ratio, beta=beta, min_numel=0, clip_factor=None))
    mems = [np.zeros(numel, F32) for _ in range(n)]
    for t in range(2 * n + 1):
        grads = [rand(rng, numel) for _ in range(n)]
        res = sim.step({"w": grads})["w"]
        expected, mems = brute_ring(mems, grads, t, ratio, beta)
        for r in range(n):
            np.testing.assert_array_equal(res.outputs[r], expected)
            np.testing.assert_array_equal(sim.memory["w"][r], mems[r])


def test_ring_chunk_smaller_than_its_k():
    """ratio 1 with chunks of one element: every element is selected."""
    sim = RingSimulator(4, ScaleComConfig(ratio=1.0, beta=0.5, min_numel=0, clip_factor=None))
    grads = [np.arange(5, dtype=F32) + r for r in range(4)]
    res = sim.step({"w": grads})["w"]
    np.testing.assert_array_equal(res.indices, np.arange(5))
    np.testing.assert_array_equal(res.outputs[0], allreduce_mean(grads))
    assert [c.size for c in res.chunk_indices] == [2, 1, 1, 1]


def test_ring_selection_owner_rotates():
    n, numel = 3, 30
    for t in range(n):
        sim = RingSimulator(n, ScaleComConfig(ratio=0.1, beta=1.0, min_numel=0, clip_factor=None))
        sim.steps["w"] = t      # fresh (zero) memory, step t of the schedule
        # Only rank (j + t) % n has a large entry in chunk j: the owner's pick wins.
        grads = [np.zeros(numel, F32) for _ in range(n)]
        for j in range(n):
            owner = (j + t) % n
            grads[owner][j * 10 + owner + 1] = 100.0
            grads[(owner + 1) % n][j * 10 + 9] = 1000.0    # a non-owner's peak is ignored
        res = sim.step({"w": grads})["w"]
        expected = [j * 10 + (j + t) % n + 1 for j in range(n)]
        np.testing.assert_array_equal(res.indices, expected)


# --- bytes on the wire -------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_ring_bytes_equal_the_formula(n):
    numel = 1000 * n               # equal chunks of 1000, k_j = 10
    sim = RingSimulator(n, ScaleComConfig(ratio=0.01, min_numel=0))
    rng = np.random.default_rng(n)
    sim.step({"a": [rand(rng, numel) for _ in range(n)], "b": [rand(rng, numel) for _ in range(n)]})
    k = 10 * n
    per_tensor = bytes_model.ring(k, n)
    assert per_tensor == 12 * k * (n - 1) / n
    np.testing.assert_array_equal(sim.last_bytes, [2 * per_tensor] * n)


def test_ring_bytes_do_not_grow_with_n():
    numel = 1 << 16
    per_rank = {}
    for n in (2, 4, 8):
        sim = RingSimulator(n, ScaleComConfig(ratio=0.01, min_numel=0))
        sim.step({"w": [np.ones(numel, F32) for _ in range(n)]})
        per_rank[n] = sim.last_bytes
    k = num_selected(numel // 8, 0.01) * 8          # chunk sizes divide evenly
    for n in (2, 4, 8):
        # 12 k (n - 1) / n: bounded by 12 k whatever n, unlike top-k allgather.
        assert per_rank[n].max() <= 12 * k
    assert per_rank[8].max() / per_rank[2].min() <= (7 / 8) / (1 / 2) + 0.05
    assert bytes_model.topk_allgather(655, 8) == 7 * bytes_model.topk_allgather(655, 2)


def test_byte_model_formulas():
    N, n, k = 1_000_000, 4, 10_000
    assert bytes_model.dense_ring_allreduce(N, n) == 8 * N * 3 / 4
    assert bytes_model.horovod_path(k, n) == 4 * k + 8 * k * 3 / 4
    assert bytes_model.topk_allgather(k, n) == 8 * k * 3
    # At ratio 0.01 the ring moves about 1/66 of dense.
    assert 60 < bytes_model.dense_ring_allreduce(N, n) / bytes_model.ring(k, n) < 70
    sim = HorovodPathSimulator(n, ScaleComConfig(ratio=0.01, min_numel=0))
    res = sim.step("w", [np.ones(N, F32)] * n)
    assert res.bytes_sent == [bytes_model.horovod_path(k, n)] * n


def test_nonfinite_updates_leave_the_memory_alone():
    m = np.array([1.0, 2.0, 3.0, 4.0], F32)
    g = np.array([np.nan, np.inf, 1.0, np.nan], F32)
    c, m_new = gather_and_update(m, g, np.array([3], np.int32), 0.5)
    np.testing.assert_array_equal(m_new, [1.0, 2.0, 3.5, F32(0.5) * 4.0])
    assert np.isnan(c[0])


@pytest.mark.parametrize("simulator", [HorovodPathSimulator, RingSimulator])
def test_simulators_refuse_clip_norm_they_would_ignore(simulator):
    with pytest.raises(ValueError, match="do not apply clip_norm"):
        simulator(2, ScaleComConfig(clip_norm=1.0))


def test_horovod_path_simulator_staggers_as_the_config_says():
    staggered = HorovodPathSimulator(3, ScaleComConfig(stagger_leaders=True, min_numel=0))
    for i, name in enumerate("abc"):
        assert staggered.register(name, 10).offset == i
