"""horovod_scalecom.tensorflow under real `mpirun -np N`: the reference, parity with
the torch frontend, Keras model.fit with the callback, checkpoints, bad input.

Each framework runs in its own mpirun job: horovod.torch and horovod.tensorflow
never share a process.
"""

import json
import time

import numpy as np
import pytest

from horovod_scalecom import bytes_model  # noqa: E402
from horovod_scalecom.config import ScaleComConfig  # noqa: E402
from horovod_scalecom.reference import HorovodPathSimulator  # noqa: E402
from horovod_scalecom.stats import TIMINGS, last_step, new_record  # noqa: E402

from compressor_check import NAMES, check  # noqa: E402
from mpi import run_mpi, requires  # noqa: E402
from workers.common import SHAPES, gradient  # noqa: E402

requires("horovod.tensorflow")

STEPS = 20
CFG = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
RING_SHAPES = {"a": (64, 48), "b": (37, 29), "bias": (64,), "c": (1000,)}

# The keys every frontend's stats() has (horovod_scalecom.stats, framework-free).
STATS_KEYS = set(last_step({}, {}, ""))
RECORD_KEYS = set(new_record(1, None, None, 0, 2, timed=False))


def check_stats(job, n, steps, cfg, shapes=None, ring=False, seed=0):
    """Each step's stats() on every rank (the worker's stats/{step}): the keys
    of horovod_scalecom.stats, and per tensor the figures the NumPy reference
    gives for the same gradients: dense or not, k, leader, bytes, and the
    relative clip's norm and scale, bit for bit (the C++ op and the reference
    take the norm in the same order). ``ring``: the ring's job, whose
    records have no leader and the ring's bytes. Returns how often the clip
    fired."""
    shapes = shapes or dict(zip(NAMES, SHAPES.values()))
    sim = HorovodPathSimulator(n, cfg)
    results = [job.result(r) for r in range(n)]
    fired = 0
    for step in range(steps):
        expected = {name: sim.step(name, [gradient(seed, r, step, i, shape) for r in range(n)])
                    for i, (name, shape) in enumerate(shapes.items())}
        for r in range(n):
            stats = json.loads(str(results[r][f"stats/{step}"]))
            assert set(stats) == STATS_KEYS, sorted(stats)
            assert stats["index_share"] == (
                "none (the ring's chunk owners select)" if ring else "horovod allgather")
            assert all(stats[key] is None for key in TIMINGS), stats
            compressible = sorted(name for name, shape in shapes.items()
                                  if np.prod(shape) >= cfg.min_numel)
            assert sorted(stats["tensors"]) == compressible
            clipped = 0
            for name, record in stats["tensors"].items():
                what = f"{name} at step {step} on rank {r}"
                assert set(record) == RECORD_KEYS, (what, sorted(record))
                numel = int(np.prod(shapes[name]))
                dense = bytes_model.dense_ring_allreduce(numel, n)
                assert (record["numel"], record["step"], record["dense_bytes"]) == (
                    numel, step, dense), what
                assert all(record[key] is None for key in TIMINGS), what
                if expected[name].leader is None:     # warm-up: a dense exchange
                    assert (record["k"], record["leader"], record["grad_norm"],
                            record["clip_scale"]) == (None, None, None, 1.0), what
                    assert record["bytes_sent"] == dense, what
                    continue
                clip = sim.levels.last[name][r]
                assert record["k"] == cfg.k(numel), what
                if ring:
                    assert record["leader"] is None, what
                    assert record["bytes_sent"] == bytes_model.ring(cfg.k(numel), n), what
                else:
                    assert record["leader"] == expected[name].leader, what
                    assert record["bytes_sent"] == bytes_model.horovod_path(cfg.k(numel), n), what
                assert record["grad_norm"] == clip.norm, what
                assert record["clip_scale"] == float(clip.scale), what
                clipped += int(clip.scale < 1)
            assert stats["clipped"] == clipped, (step, r)
            fired += clipped
            records = stats["tensors"].values()
            assert stats["bytes_sent"] == sum(v["bytes_sent"] for v in records)
            assert stats["dense_bytes"] == sum(v["dense_bytes"] for v in records)
    return fired


@pytest.mark.parametrize("n", [2, 3])
def test_parity_with_torch_and_reference(n, tmp_path):
    args = ("sequence", "--steps", str(STEPS))
    tf_job = run_mpi(n, "tf_compressor.py", tmp_path / "tf", *args, timeout=300).check_ok()
    torch_job = run_mpi(n, "torch_compressor.py", tmp_path / "torch", *args,
                        timeout=300).check_ok()
    tf_results = check(tf_job, n, STEPS, CFG, exact=(n == 2))
    torch_results = check(torch_job, n, STEPS, CFG, exact=(n == 2))
    # The gradients' norms jump from step to step: the relative clip fires, and
    # stats() must say so with the reference's scale.
    assert check_stats(tf_job, n, STEPS, CFG) > 0
    # Same core, same MPI sum: the two frontends agree bit for bit on any n.
    for r in range(n):
        for step in range(STEPS):
            for name in NAMES:
                key = f"out/{step}/{name}"
                np.testing.assert_array_equal(
                    tf_results[r][key].reshape(-1).view(np.uint32),
                    torch_results[r][key].reshape(-1).view(np.uint32), err_msg=key)
        for key in tf_results[r]:
            if key.startswith("mem/"):
                np.testing.assert_array_equal(tf_results[r][key].view(np.uint32),
                                              torch_results[r][key].view(np.uint32),
                                              err_msg=key)


def test_nonfinite_gradients_same_policy_and_count_as_torch(tmp_path):
    # Rank 1 sends an Inf and a NaN in one tensor at step 2: the memory keeps
    # its entries (both frontends bitwise equal to the reference) and both
    # report the refused updates alike.
    args = ("sequence", "--steps", "4", "--inject")
    tf_job = run_mpi(2, "tf_compressor.py", tmp_path / "tf", *args, timeout=300).check_ok()
    torch_job = run_mpi(2, "torch_compressor.py", tmp_path / "torch", *args,
                        timeout=300).check_ok()
    tf_results = check(tf_job, 2, 4, CFG, exact=True, inject=True)
    torch_results = check(torch_job, 2, 4, CFG, exact=True, inject=True)
    counts = {(r, t): int(torch_results[r][f"nonfinite/{t}"]) for r in range(2) for t in range(4)}
    for (r, t), count in counts.items():
        assert int(tf_results[r][f"nonfinite/{t}"]) == count, (r, t)
    assert counts[(1, 2)] > 0 and sum(counts.values()) == counts[(1, 2)], counts
    for r in range(2):
        for key, mem in tf_results[r].items():
            if key.startswith("mem/"):
                assert np.isfinite(mem).all(), key
    # The divergence guard: rank 1 names the NaN gradient of the first tensor at
    # step 2, rank 0 the spike of the third at step 3 (clipped, so nothing
    # non-finite reaches the exchange); both frontends report the same events.
    for r in range(2):
        torch_events = json.loads(str(torch_results[r]["divergence"]))
        tf_events = json.loads(str(tf_results[r]["divergence"]))
        firsts = sorted((e["kind"], e["step"], e["rank"]) for e in torch_events["first"])
        if r == 1:
            assert ("nonfinite_gradient", 2, 1) in firsts, firsts
        else:
            assert ("gradient_spike", 3, 0) in firsts, firsts
        assert "nonfinite_exchange" not in {kind for kind, _, _ in firsts}
        assert firsts == sorted((e["kind"], e["step"], e["rank"]) for e in tf_events["first"])
        spikes = [e for e in torch_events["first"] if e["kind"] == "gradient_spike"]
        tf_spikes = [e for e in tf_events["first"] if e["kind"] == "gradient_spike"]
        assert [(e["value"], e["level"]) for e in spikes] == [(e["value"], e["level"])
                                                             for e in tf_spikes]
    # stats() turned the TF graph's record into a RuntimeWarning, as torch's guard does.
    assert "gradient_spike" in tf_job.output or "gradient norm" in tf_job.output


def test_clip_norm_acts_before_the_exchange(tmp_path):
    # As the torch frontend's clip_before_exchange: the reference fed with
    # each rank's clipped gradients (up to the rounding of the norm).
    job = run_mpi(2, "tf_compressor.py", tmp_path, "sequence", "--steps", "6", "--clip", "5",
                  "--function", timeout=300).check_ok()
    check(job, 2, 6, CFG, exact=False, memory_exact=False, clip=5.0)


def test_inside_tf_function_with_warmup(tmp_path):
    cfg = ScaleComConfig(ratio=0.02, beta=0.3, warmup_steps=3, min_numel=100)
    job = run_mpi(2, "tf_compressor.py", tmp_path, "sequence", "--steps", "8", "--function",
                  "--ratio", "0.02", "--beta", "0.3", "--warmup", "3", timeout=300).check_ok()
    check(job, 2, 8, cfg, exact=True)
    check_stats(job, 2, 8, cfg)


def test_tf_ring_stats_have_the_compressor_keys_and_clip(tmp_path):
    # The ring keeps its records in the same ScaleCom, under the same keys;
    # its relative clip is the compressor's.
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, warmup_steps=2, min_numel=100)
    job = run_mpi(2, "tf_compressor.py", tmp_path, "ring_sequence", "--steps", "6", "--warmup",
                  "2", "--function", timeout=300).check_ok()
    assert check_stats(job, 2, 6, cfg, RING_SHAPES, ring=True) > 0


def test_keras_fit_with_callback(tmp_path):
    job = run_mpi(2, "tf_compressor.py", tmp_path, "keras", "--steps", "12",
                  timeout=300).check_ok()
    job.assert_ranks_equal("w")
    a = job.result(0)
    ratio = a["history/scalecom_ratio"]
    assert ratio[0] == 1.0, "epoch 1 is the callback's dense warm-up"
    assert ratio[1] > 5 and ratio[2] == ratio[1]
    mb = a["history/scalecom_mb_per_step"]
    assert mb[1] * 5 < mb[0]


def test_tape_loop_ranks_agree(tmp_path):
    job = run_mpi(2, "tf_compressor.py", tmp_path, "tape", "--steps", "30",
                  timeout=300).check_ok()
    job.assert_ranks_equal()


# Refused on each rank before any collective: one job runs them all.
LOCAL_REFUSALS = {
    "ratio": "ratio must lie in",
    "beta": "beta must lie in",
    "callback": "needs the ScaleCom instance",
    "clip": "clip_norm must be a positive number",
    "share_timeout": "share_timeout must be a positive number, got -1.0",
    "ring_timeout": "horovod_scalecom.tensorflow.DistributedGradientTape does not take "
    "timeout: the ring waits the ScaleCom's share_timeout for the other ranks; pass "
    "compression=ScaleCom(share_timeout=...) instead",
    "keras_ring_timeout": "horovod_scalecom.tensorflow.keras.DistributedOptimizer does "
    "not take timeout: the ring waits the ScaleCom's share_timeout",
    "ring_arguments": "horovod_scalecom.tensorflow.DistributedGradientTape: op=hvd.Sum is not "
    "supported: the ScaleCom ring averages, op must be hvd.Average; for op=hvd.Sum use "
    "hvd.DistributedGradientTape(..., op=hvd.Sum, compression=ScaleCom(...))",
}


@pytest.fixture(scope="module")
def local_refusals(tmp_path_factory):
    return run_mpi(2, "tf_compressor.py", tmp_path_factory.mktemp("refusals"), "bad_each",
                   "--case", ",".join(LOCAL_REFUSALS), timeout=180).check_ok()


@pytest.mark.parametrize("case", list(LOCAL_REFUSALS))
def test_bad_configuration_fails_clearly(case, local_refusals):
    for rank in range(2):
        err = (local_refusals.outdir / case / f"rank{rank}.err").read_text()
        assert LOCAL_REFUSALS[case] in err, f"rank {rank}: {err}"


@pytest.mark.parametrize("case,message", [
    ("eager", "not on an eager tensor"),
    ("graph_mode", "TF1 graph mode (tf.compat.v1.disable_eager_execution, sessions) is not"),
])
def test_bad_use_fails_clearly(case, message, tmp_path):
    job = run_mpi(2, "tf_compressor.py", tmp_path, "bad", "--case", case, timeout=180)
    job.assert_error_on_every_rank(message)


def test_share_timeout_bounds_the_tf_ring_wait(tmp_path):
    # Rank 1 stops for 60 s before step 1: rank 0's ring gives up after
    # ScaleCom's share_timeout (3 s, the engine says so), not the default 120 s.
    # Eager code wraps a new tape every step: the engine is the ScaleCom's, made
    # once (a new one per tape would wait in MPI_Comm_dup, which has no timeout).
    start = time.monotonic()
    job = run_mpi(2, "tf_compressor.py", tmp_path, "ring_sequence", "--steps", "3",
                  "--min-numel", "0", "--share-timeout", "3", "--stall-at", "1", "--stall", "60",
                  timeout=180)
    elapsed = time.monotonic() - start
    assert job.returncode != 0, job.output
    err = job.error(0) or ""
    assert "ScaleCom ring on rank 0: ring allreduce: rank 0 waited 3 s" in err, job.output
    assert elapsed < 55, f"the job took {elapsed:.0f} s to end"


@pytest.mark.parametrize("path", ["horovod", "ring"])
def test_ranks_that_disagree_on_the_configuration_fail_clearly(path, tmp_path):
    # Rank 1 has another beta, no clip_norm and no relative clip: before, the
    # compressor trained on with different memories and the ring too (the
    # engine compares sizes and ratio only).
    job = run_mpi(2, "tf_compressor.py", tmp_path, "bad", "--case", "disagree", "--path", path,
                  "--function", "--clip", "5", timeout=180)
    job.assert_error_on_every_rank("ranks disagree on beta, clip_norm, clip_factor (rank 0: "
                                   "beta 0.1, clip_norm 5, clip_factor 2; rank 1: beta 0.3, "
                                   "clip_norm 0, clip_factor 0)")


@pytest.mark.parametrize("path", ["horovod", "ring"])
def test_one_scalecom_for_two_variable_lists_fails_clearly(path, tmp_path):
    # Before: the second model's gradient silently got a memory entry of its own
    # at the first one's position (and shared it whenever the shapes matched).
    job = run_mpi(2, "tf_compressor.py", tmp_path, "bad", "--case", "two_models", "--path",
                  path, timeout=180)
    job.assert_error_on_every_rank("gradient 0 of this step has shape [16, 8], earlier steps "
                                   "had [64, 32] there")


def test_horovod_path_under_horovodrun_gloo(tmp_path):
    # As the torch frontend: Horovod's Gloo controller, no MPI, inside tf.function.
    job = run_mpi(2, "tf_compressor.py", tmp_path, "sequence", "--steps", "6", "--function",
                  timeout=300, gloo=True).check_ok()
    check(job, 2, 6, CFG, exact=True)
    check_stats(job, 2, 6, CFG)


def test_ring_under_gloo_is_refused_when_built(tmp_path):
    # The ring is an MPI communicator; Gloo (and so Elastic) has none.
    job = run_mpi(2, "tf_compressor.py", tmp_path, "ring_sequence", "--steps", "2",
                  timeout=300, gloo=True)
    job.assert_error_on_every_rank("needs Horovod on MPI (its ring is an MPI communicator)")


def test_elastic_restore_of_a_snapshot_taken_before_the_first_trace(tmp_path):
    # hvd.elastic.run restores the last commit after a failure; the first
    # commit (the State's own snapshot) comes before any gradient was traced.
    run_mpi(2, "tf_restore.py", tmp_path, timeout=180).check_ok()
