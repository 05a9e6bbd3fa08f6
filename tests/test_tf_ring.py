"""The TensorFlow ring with Horovod's tape and Keras optimizer arguments under
real `mpirun -np N` (one job per N runs every case of tests/workers/tf_ring.py):
backward_passes_per_step with average_aggregated_gradients (Keras fit() and a
custom loop), sparse_as_dense, groups/num_groups, register_local_source and
register_local_var, against the NumPy ring simulator bit for bit; and the
refusals of what the ring cannot do, word for word the PyTorch ring's."""

import json
import os
import sys

import numpy as np
import pytest

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import RingSimulator
from horovod_scalecom.reference.horovod_path import allreduce_mean

from mpi import ROOT, WORKERS, Job, requires, run_bounded, run_mpi

requires("horovod.tensorflow")

CFG = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
STEPS = 3
CASES = ["num_groups", "groups_list", "sparse", "local", "keras_fit", "keras_loop"]
# The refusals need one rank: they run in the job of 2 only.
CASES_OF = {2: CASES + ["refusals"], 3: CASES}


@pytest.fixture(scope="module")
def ring_job(tmp_path_factory):
    """n -> the one mpirun job of n ranks that ran every case."""
    jobs = {}

    def get(n: int) -> Job:
        if n not in jobs:
            jobs[n] = run_mpi(n, "tf_ring.py", tmp_path_factory.mktemp(f"tf-ring-{n}"),
                              ",".join(CASES_OF[n]), "--steps", str(STEPS), timeout=400)
        return jobs[n].check_ok()

    return get


def case_results(job: Job, case: str) -> list[dict]:
    return [Job(job.returncode, job.output, job.outdir / case, job.n).result(r)
            for r in range(job.n)]


def check_ring(results: list[dict], scale: np.float32 = np.float32(1), names=None) -> None:
    """Each step's outputs equal on every rank and the reference ring's mean
    of the ranks' inputs (times ``scale``), bit for bit; the ring's bytes as
    the reference counts them, where the job recorded them."""
    n = len(results)
    names = names or sorted({k.split("/", 2)[2] for k in results[0] if k.startswith("out/")})
    sim = RingSimulator(n, CFG)
    for step in range(STEPS):
        grads = {name: [res[f"in/{step}/{name}"] for res in results] for name in names}
        ring = sim.step(grads)
        for name in names:
            outs = [res[f"out/{step}/{name}"].reshape(-1) for res in results]
            for r in range(1, n):
                np.testing.assert_array_equal(outs[r], outs[0], err_msg=f"{name}, rank {r}")
            if ring[name] is None:      # Horovod's dense allreduce: MPI's sum order
                expected = allreduce_mean([g.reshape(-1) for g in grads[name]]) * scale
                np.testing.assert_allclose(outs[0], expected, rtol=1e-6, atol=1e-6)
            else:
                expected = ring[name].outputs[0] * scale
                np.testing.assert_array_equal(outs[0].view(np.uint32), expected.view(np.uint32),
                                              err_msg=f"{name} at step {step}")
        for r, res in enumerate(results):
            if f"bytes/{step}" in res:
                assert int(res[f"bytes/{step}"]) == sim.last_bytes[r], f"bytes of rank {r}"


@pytest.mark.parametrize("n", [2, 3])
def test_groups_change_no_bit(n, ring_job):
    # num_groups=2: (a, b) and (bias, c), bias dense: 2 ring messages; groups=[[a, c]]:
    # a and c fused, b alone, bias (dense) alone: 2.
    for case in ("num_groups", "groups_list"):
        results = case_results(ring_job(n), case)
        check_ring(results)
        assert {int(res[f"groups/{s}"]) for res in results for s in range(STEPS)} == {2}, case


@pytest.mark.parametrize("n", [2, 3])
def test_sparse_as_dense_compresses_the_embedding(n, ring_job):
    results = case_results(ring_job(n), "sparse")
    check_ring(results, names=["table"])
    # Without sparse_as_dense: Horovod's sparse allreduce, the exact mean, and a warning.
    expected = np.zeros((300, 16))
    for r in range(n):
        expected[7 * r:7 * r + 40] += (r + 1.0) / n
    for res in results:
        assert bool(res["sparse_is_slices"])
        np.testing.assert_allclose(res["sparse_mean"], expected, rtol=1e-6)
        assert "is sparse (IndexedSlices)" in str(res["warned"]) \
            and "sparse_as_dense=True" in str(res["warned"]), str(res["warned"])


@pytest.mark.parametrize("n", [2, 3])
def test_local_sources_stay_out_of_the_ring(n, ring_job):
    results = case_results(ring_job(n), "local")
    check_ring(results)
    for r, res in enumerate(results):
        for step in range(STEPS):
            # Horovod's scale_local_gradients: this rank's own gradient / n.
            own = res[f"local_in/{step}"]
            # TensorFlow's division may differ from numpy's by one unit in the last place.
            np.testing.assert_array_max_ulp(res[f"local_out/{step}"], own / np.float32(n), 1)
            assert res[f"local_out/{step}"].shape == (5 + r, 3)
            assert res[f"layer_out/{step}"].shape == (7 + r, 4)


@pytest.mark.parametrize("n", [2, 3])
def test_keras_fit_accumulates_and_averages_passes(n, ring_job):
    # fit(), backward_passes_per_step=2 with average_aggregated_gradients: the
    # ring on the sum of two passes, divided by 2; Keras counts every pass.
    results = case_results(ring_job(n), "keras_fit")
    check_ring(results, scale=np.float32(0.5))
    for res in results:
        assert int(res["iterations"]) == 2 * STEPS and int(res["counter"]) == 0


@pytest.mark.parametrize("n", [2, 3])
def test_keras_custom_loop_accumulates_passes(n, ring_job):
    # The tape's own gradients to apply_gradients: exchanged there once per
    # step (the sum of the passes, not averaged), in num_groups=2 messages, a
    # local variable summed and divided by n.
    results = case_results(ring_job(n), "keras_loop")
    check_ring(results)
    for res in results:
        assert int(res["iterations"]) == 2 * STEPS
        assert {int(res[f"groups/{s}"]) for s in range(STEPS)} == {2}
        for step in range(STEPS):
            np.testing.assert_array_max_ulp(res[f"local_out/{step}"],
                                            res[f"local_in/{step}"] / np.float32(n), 1)


def torch_refusals() -> dict:
    """tests/workers/ring_refusals.py's findings for torch's ring, in a process
    of its own (one rank, no mpirun: horovod.torch never shares one with
    horovod.tensorflow)."""
    requires("horovod.torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    code, output, killed = run_bounded(
        [sys.executable, str(WORKERS / "ring_refusals.py"), "torch"], env, 240)
    line = [x for x in output.splitlines() if x.startswith("REFUSALS ")]
    assert code == 0 and not killed and line, output[-3000:]
    return json.loads(line[0][len("REFUSALS "):])["torch"]


# The argument each refusal names.
NAMED = {"op_sum": "op=hvd.Sum", "op_adasum": "op=hvd.Adasum",
         "predivide": "gradient_predivide_factor=2.0", "both_groups": "num_groups or groups",
         "process_set": "process_set", "passes": "backward_passes_per_step",
         "no_compression": "compression=ScaleCom(...)",
         "other_compression": "compression=ScaleCom(...)"}


def test_refusals_are_the_pytorch_rings_word_for_word(ring_job):
    torch = torch_refusals()
    found = [json.loads(str(res["json"])) for res in case_results(ring_job(2), "refusals")]
    assert found[0] == found[1], "the ranks' refusals differ"
    tensorflow = found[0]
    assert set(torch) == set(NAMED)
    for case, message in torch.items():
        assert message.startswith(("ValueError: <ring>", "TypeError: <ring>")), message
        assert NAMED[case] in message, message
        assert tensorflow["keras"][case] == message, (case, tensorflow["keras"][case])
        if case != "passes":            # Horovod's tape has no backward_passes_per_step
            assert tensorflow["tape"][case] == message, (case, tensorflow["tape"][case])
    # Each names what to use instead: Horovod's wrapper, or the loss.
    assert all("<horovod>" in m for c, m in torch.items() if c not in ("both_groups", "passes"))
