"""ScaleCom's DDP communication hook on real multi-process jobs (gloo)
against the NumPy reference: every rank's averaged gradients, at every step,
bitwise on 2 ranks; memories bitwise on every rank."""

import os
import socket
import sys

import pytest

from compressor_check import assert_exchange, check
from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import HorovodPathSimulator
from workers.common import gradient
from mpi import ROOT, WORKERS, Job, requires, run_bounded, run_mpi

requires("torch")

CFG = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=1024)
STEPS = 6


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def ddp_job(tmp_path, n, *cases, timeout=120, share_timeout=60):
    # The port is free when picked but may be taken before rank 0 listens on
    # it (other jobs share the machine): then, and only then, try another.
    for attempt in range(3):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port(),
               "SHARE_TIMEOUT": str(share_timeout)}
        job = run_mpi(n, "ddp_hook.py", tmp_path, *cases, env=env, timeout=timeout)
        if "EADDRINUSE" not in job.output:
            return job
    return job


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("case", ["plain", "buckets"])
def test_hook_matches_reference(tmp_path, n, case):
    job = ddp_job(tmp_path, n, case).check_ok()
    results = check(job, n, STEPS, CFG, exact=(n == 2))
    if case == "buckets":
        assert all(int(r["buckets"]) > 1 for r in results)
    # The byte model: compressed parameters send far fewer bytes than dense.
    assert float(results[0]["bytes_sent"]) < float(results[0]["dense_bytes"]) / 2


@pytest.mark.parametrize("case", ["static", "view", "nosync", "unused", "warmup", "resume"])
def test_hook_with_ddp_features(tmp_path, case):
    job = ddp_job(tmp_path, 2, "buckets", case).check_ok()
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=1024,
                         warmup_steps=2 if case == "warmup" else 0)
    check(job, 2, STEPS, cfg, exact=True, bpps=2 if case == "nosync" else 1,
          skip_param=3 if case == "unused" else None)


def test_hook_clip_norm_acts_before_the_exchange(tmp_path):
    # clip_norm=5 on gradients of norm ~50: the reference fed with each rank's
    # clipped gradients (up to the rounding of the norm), as in the Horovod paths.
    job = ddp_job(tmp_path, 2, "buckets", "clipnorm").check_ok()
    check(job, 2, STEPS, CFG, exact=False, memory_exact=False, clip=5.0)


def test_hook_over_a_process_group_of_some_ranks(tmp_path):
    # Ranks 0 and 1 of 3 train; rank 2 is outside their group.
    job = ddp_job(tmp_path, 3, "buckets", "subgroup").check_ok()
    check(job, 2, STEPS, CFG, exact=True)


def test_hook_under_torchrun(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]),
               OMP_NUM_THREADS="1")
    code, output, killed = run_bounded(
        torchrun + [str(WORKERS / "ddp_hook.py"), str(tmp_path), "buckets"], env, 120)
    assert not killed, output
    job = Job(code, output, tmp_path, 2).check_ok()
    check(job, 2, STEPS, CFG, exact=True)


@pytest.mark.parametrize("n", [2, 3])
def test_mismatched_config_raises_on_every_rank(tmp_path, n):
    job = ddp_job(tmp_path, n, "mismatch")
    job.assert_error_on_every_rank("ranks disagree on ratio")


def test_bad_beta_refused_on_every_rank(tmp_path):
    job = ddp_job(tmp_path, 2, "badbeta")
    job.assert_error_on_every_rank("beta must lie in (0, 1]")


def test_complex_parameter_refused_on_every_rank(tmp_path):
    job = ddp_job(tmp_path, 2, "complex")
    job.assert_error_on_every_rank("real floating-point gradients; these parameters are not: z")


def test_state_of_another_model_refused(tmp_path):
    job = ddp_job(tmp_path, 2, "stranger")
    job.assert_error_on_every_rank("build ScaleComHookState from the model that DDP wraps")


def test_bad_ratio_on_one_rank_ends_the_job(tmp_path):
    job = ddp_job(tmp_path, 2, "badratio", timeout=90, share_timeout=10)
    assert job.returncode != 0
    assert "ratio must lie in (0, 1]" in (job.error(1) or ""), job.output


def test_hook_on_cuda_gradients(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    job = ddp_job(tmp_path, 2, "buckets", "cuda").check_ok()
    # On a GPU the clip's norm is torch's sum, whose last bits may differ.
    check(job, 2, STEPS, CFG, exact=False, memory_exact=False)


def test_hundreds_of_buckets_at_once(tmp_path):
    # static_graph launches every bucket at the end of backward: 300 buckets
    # wait for their indices at once, and their allreduces go out in order.
    job = ddp_job(tmp_path, 2, "buckets", "many", timeout=300).check_ok()
    sim = HorovodPathSimulator(2, CFG)
    results = [job.result(r) for r in range(2)]
    for step in range(STEPS):
        for i in range(300):
            grads = [gradient(0, r, step, i, (1100,)) for r in range(2)]
            ref = sim.step(f"p{i}", grads).outputs[0]
            for r in range(2):
                assert_exchange(results[r][f"out/{step}/p{i}"], ref, True, f"p{i} at {step}")
    assert all(int(r["buckets"]) >= 300 for r in results)


def test_one_ranks_failure_raises_on_every_rank(tmp_path):
    job = ddp_job(tmp_path, 2, "buckets", "failrank")
    assert job.returncode != 0
    assert "injected failure in rank 1's memory update" in (job.error(1) or ""), job.output
    assert "1 rank(s) failed in the exchange of bucket" in (job.error(0) or ""), job.output


def test_states_of_different_steps_refused_on_every_rank(tmp_path):
    job = ddp_job(tmp_path, 2, "buckets", "resume", "skew")
    job.assert_error_on_every_rank("the ranks loaded states saved at different steps")


def test_sparse_gradient_refused_on_every_rank(tmp_path):
    job = ddp_job(tmp_path, 2, "sparse")
    job.assert_error_on_every_rank("table.weight are sparse")
