"""Horovod's DistributedOptimizer / DistributedGradientTape features with
ScaleCom, torch and TensorFlow, under mpirun: each works with the reference's
numbers, or is refused with the argument named. docs/usage.md's table lists
them; the rows tested elsewhere (backward_passes_per_step, groups,
checkpoints, Keras) say where.
"""

import numpy as np
import pytest

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import HorovodPathSimulator, RingSimulator
from compressor_check import assert_exchange
from mpi import Job, requires, run_mpi
from workers.common import SHAPES

requires("horovod.torch")
requires("horovod.tensorflow")

CFG = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
MODEL_ORDER = [name.replace(".", "_") for name in SHAPES]
STEPS = 5


def check(job, ranks, path, scale=1.0, exact=True, names=None, stagger=False):
    """Every rank in `ranks` got the same exchange, and it is what the
    reference makes of the gradients the ranks handed over (times `scale`:
    op=Sum)."""
    results = [job.result(r) for r in ranks]
    # The names the test expects, not the ones the worker wrote: a worker that
    # reports nothing must fail here.
    names = names or MODEL_ORDER
    n = len(ranks)
    sim = HorovodPathSimulator(n, CFG, stagger=stagger) if path == "horovod" else RingSimulator(n, CFG)
    if stagger:
        # A leader's offset is the registration index among all parameters,
        # dense ones included: the model's order.
        for name, shape in zip(MODEL_ORDER, SHAPES.values()):
            sim.register(name, int(np.prod(shape)))
    for step in range(STEPS):
        grads = {name: [res[f"in/{step}/{name}"] for res in results] for name in names}
        ring = sim.step(grads) if path == "ring" else None
        for name in names:
            outs = [res[f"out/{step}/{name}"].reshape(-1) for res in results]
            for r in range(1, n):
                np.testing.assert_array_equal(outs[r], outs[0], err_msg=f"{name}, rank {r}")
            if grads[name][0].size < CFG.min_numel:        # dense: Horovod's allreduce
                expected = np.mean([g.reshape(-1).astype(np.float64) for g in grads[name]], 0)
                np.testing.assert_allclose(outs[0], expected * scale, rtol=1e-5, atol=1e-6)
                continue
            expected = (ring[name].outputs[0] if ring is not None
                        else sim.step(name, grads[name]).outputs[0]).reshape(-1) * np.float32(scale)
            assert_exchange(outs[0], expected, exact, f"{name} at step {step}")


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("path", ["horovod", "ring"])
def test_different_hand_over_orders_and_missing_gradients(path, n, tmp_path):
    # Horovod's test_force_allreduce: rank-dependent backward orders, some
    # parameters without a gradient on some ranks (sent as zeros).
    job = run_mpi(n, "torch_features.py", tmp_path, "order", "--path", path,
                  "--steps", str(STEPS), timeout=240).check_ok()
    check(job, range(n), path, exact=(path == "ring" or n == 2))


@pytest.mark.parametrize("launcher", ["mpirun", "gloo"])
def test_different_orders_through_horovods_broadcast(launcher, tmp_path):
    # The index share as Horovod's broadcast (Gloo, Elastic, process sets):
    # from 3 ranks, a rank waiting for one tensor's indices must not keep
    # another's broadcast from completing.
    job = run_mpi(3, "torch_features.py", tmp_path, "order", "--steps", str(STEPS),
                  env={"HOROVOD_SCALECOM_INDEX_SHARE": "horovod"},
                  gloo=(launcher == "gloo"), timeout=240).check_ok()
    check(job, range(3), "horovod", exact=False)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("path", ["horovod", "ring"])
def test_sparse_as_dense(path, n, tmp_path):
    job = run_mpi(n, "torch_features.py", tmp_path, "sparse", "--path", path,
                  "--steps", str(STEPS), timeout=240).check_ok()
    check(job, range(n), path, exact=(path == "ring" or n == 2), names=["weight"])


@pytest.mark.parametrize("share", ["mpi", "horovod"])
def test_staggered_leaders(share, tmp_path):
    # Each tensor its own leader; one hand-over order; receives as they come.
    job = run_mpi(3, "torch_features.py", tmp_path, "stagger", "--steps", str(STEPS),
                  env={"HOROVOD_SCALECOM_INDEX_SHARE": share}, timeout=240).check_ok()
    check(job, range(3), "horovod", exact=False, stagger=True)


@pytest.mark.parametrize("share", ["mpi", "horovod"])
def test_sparse_gradient_without_sparse_as_dense_goes_around_with_a_warning(share, tmp_path):
    # Horovod's sparse allgather carries the embedding (never ScaleCom): the
    # mean, uncompressed, and a warning on every rank; with the broadcast share
    # on 3 ranks no receive is left waiting for it.
    job = run_mpi(3, "torch_features.py", tmp_path, "sparse_bypass", "--steps", str(STEPS),
                  env={"HOROVOD_SCALECOM_INDEX_SHARE": share}, timeout=240).check_ok()
    for r in range(3):
        assert job.result(r)["warned"][0], f"rank {r} did not warn about the sparse gradient"
        assert job.result(r)["open_receives"][0] == 0, f"rank {r} kept a receive open"
    check(job, range(3), "horovod", exact=False, names=["w"])
    results = [job.result(r) for r in range(3)]
    for step in range(STEPS):
        mean = np.mean([res[f"in/{step}/emb"] for res in results], 0)
        for res in results:
            np.testing.assert_allclose(res[f"out/{step}/emb"], mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("case", ["sum", "predivide"])
def test_sum_and_predivide(case, n, tmp_path):
    # Horovod sums the k values (op=Sum), or pre-divides by 2 and post-multiplies.
    job = run_mpi(n, "torch_features.py", tmp_path, case, "--steps", str(STEPS),
                  timeout=240).check_ok()
    check(job, range(n), "horovod", scale=float(n) if case == "sum" else 1.0, exact=False)


def test_process_set(tmp_path):
    # ScaleCom and the optimizer over ranks 0 and 1 of 3: the reference of two.
    job = run_mpi(3, "torch_features.py", tmp_path, "process_set", "--steps", str(STEPS),
                  timeout=240).check_ok()
    check(job, range(2), "horovod")


@pytest.mark.parametrize("path,case,n,ranks,message", [
    ("horovod", "refuse_adasum", 2, 1, "op=hvd.Adasum exchanges the parameters' updates"),
    ("horovod", "refuse_adasum", 3, 2, "op=hvd.Adasum exchanges the parameters' updates"),
    ("horovod", "refuse_min", 2, 1, "op=hvd.Min is not supported; ScaleCom averages or sums"),
    ("horovod", "refuse_min", 3, 2, "op=hvd.Min is not supported; ScaleCom averages or sums"),
    # A process set of ranks 0..n-2 needs 3 ranks to be a set of more than one.
    ("horovod", "refuse_ps_optimizer", 3, 2,
     "the optimizer reduces over the process set of ranks [0, 1]"),
    ("horovod", "refuse_ps_scalecom", 3, 3, "ScaleCom was built for the process set of ranks [0, 1]"),
    ("ring", "refuse_adasum", 2, 1, "op must be hvd.Average"),
    ("ring", "refuse_adasum", 3, 2, "op must be hvd.Average"),
    ("ring", "refuse_ps_ring", 3, 2, "process_set"),
])
def test_refused_with_the_argument_named(path, case, n, ranks, message, tmp_path):
    job = run_mpi(n, "torch_features.py", tmp_path, case, "--path", path, timeout=180)
    assert job.returncode != 0
    errors = [job.error(r) or "" for r in range(n)]
    failing = [r for r in range(n) if message in errors[r]]
    assert len(failing) >= ranks, errors
    assert not any("raised nothing" in e for e in errors), errors


TF_CASES = {2: ["sum", "predivide", "groups", "keras_bpps", "sparse", "order"],
            3: ["sum", "predivide", "groups", "keras_bpps", "sparse", "order", "process_set"]}


def case_job(job: Job, case: str) -> Job:
    """The part of a job of several tf_features.py cases that `case` wrote."""
    return Job(job.returncode, job.output, job.outdir / case, job.n)


@pytest.fixture(scope="module")
def tf_features_job(tmp_path_factory):
    """n -> one mpirun job that ran every case of TF_CASES[n] in turn."""
    jobs = {}

    def get(n: int) -> Job:
        if n not in jobs:
            jobs[n] = run_mpi(n, "tf_features.py", tmp_path_factory.mktemp(f"tf-features-{n}"),
                              ",".join(TF_CASES[n]), "--steps", str(STEPS), timeout=480)
        return jobs[n].check_ok()

    return get


@pytest.mark.parametrize("case,n,scale,ranks", [
    ("sum", 2, 2.0, 2), ("sum", 3, 3.0, 3), ("predivide", 2, 1.0, 2), ("predivide", 3, 1.0, 3),
    ("groups", 2, 1.0, 2), ("groups", 3, 1.0, 3), ("keras_bpps", 2, 1.0, 2),
    ("keras_bpps", 3, 1.0, 3), ("process_set", 3, 1.0, 2), ("sparse", 2, 1.0, 2),
    ("sparse", 3, 1.0, 3), ("order", 2, 1.0, 2), ("order", 3, 1.0, 3)])
def test_tensorflow_features(case, n, scale, ranks, tf_features_job):
    job = case_job(tf_features_job(n), case)
    exact = scale == 1.0 and ranks == 2 and case != "predivide"
    check(job, range(ranks), "horovod", scale=scale, exact=exact,
          names=["table"] if case == "sparse" else None)


def test_tensorflow_different_orders_under_gloo(tmp_path):
    # Horovod's Gloo controller: the same held-back gradients on 3 ranks.
    job = run_mpi(3, "tf_features.py", tmp_path, "order", "--steps", str(STEPS), gloo=True,
                  timeout=300).check_ok()
    check(case_job(job, "order"), range(3), "horovod", exact=False)


@pytest.mark.parametrize("case,n,ranks,message", [
    # At least one rank: mpirun may end the others before they write theirs.
    ("refuse_adasum", 2, 1, "op=hvd.Adasum is not supported; ScaleCom averages or sums"),
    ("refuse_adasum", 3, 1, "op=hvd.Adasum is not supported; ScaleCom averages or sums"),
    ("refuse_min", 2, 1, "op=hvd.Min is not supported; ScaleCom averages or sums"),
    ("refuse_min", 3, 1, "op=hvd.Min is not supported; ScaleCom averages or sums"),
    ("refuse_ps_tape", 3, 1, "the optimizer reduces over the process set of ranks [0, 1]"),
])
def test_tensorflow_refused_with_the_argument_named(case, n, ranks, message, tmp_path):
    # Inside tf.function, where autograph runs converted copies of Horovod's code.
    job = run_mpi(n, "tf_features.py", tmp_path, case, timeout=240)
    assert job.returncode != 0
    errors = [job.error(r) or "" for r in range(n)]
    assert sum(message in e for e in errors) >= ranks, errors
    assert not any("raised nothing" in e for e in errors), errors


def test_join_is_not_supported_and_ends_in_an_error_naming_it(tmp_path):
    # Rank 1 joins after one step; rank 0 waits for the indices rank 1 leads
    # and raises at share_timeout (10 s here) instead of hanging.
    job = run_mpi(2, "torch_features.py", tmp_path, "join", timeout=180)
    assert job.returncode != 0
    assert "hvd.join()" in (job.error(0) or ""), job.output
