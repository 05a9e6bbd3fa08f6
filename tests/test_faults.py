"""Faults under real mpirun, for both frameworks and both paths: a rank killed
mid-run ends the job, and a checkpointed run resumes on the exact trajectory."""

import time

import pytest

from mpi import run_mpi, requires

WORKERS = {"torch": ("torch_compressor.py", "train"), "tensorflow": ("tf_compressor.py", "tape")}
BOTH = [(framework, path) for framework in WORKERS for path in ("horovod", "ring")]


def needs(framework):
    requires("horovod.torch" if framework == "torch" else "horovod.tensorflow")


@pytest.mark.parametrize("framework,path", BOTH)
def test_killed_rank_ends_the_job_within_60_s(framework, path, tmp_path):
    needs(framework)
    worker, mode = WORKERS[framework]
    start = time.monotonic()
    # Rank 1 SIGKILLs itself before step 5 of 200: the other two are then inside
    # a collective it will never join.
    job = run_mpi(3, worker, tmp_path, mode, "--steps", "200", "--kill-at", "5",
                  "--path", path, timeout=150)
    elapsed = time.monotonic() - start
    assert job.returncode != 0, job.output
    assert "signal 9" in job.output or "killed" in job.output.lower(), job.output
    assert not (tmp_path / "rank0.npz").exists(), "a survivor finished training without rank 1"
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end after rank 1 died"


@pytest.mark.parametrize("framework,path", BOTH)
def test_job_stopped_after_a_checkpoint_resumes_on_the_same_trajectory(framework, path,
                                                                       tmp_path):
    needs(framework)
    worker, mode = WORKERS[framework]
    common = (mode, "--steps", "30", "--ratio", "0.02", "--warmup", "3", "--path", path)
    straight = run_mpi(2, worker, tmp_path / "straight", *common, timeout=300).check_ok()
    # One job trains 15 steps, saves model, optimizer and ScaleCom state, and
    # ends; a second job (new processes) restores them and trains on.
    run_mpi(2, worker, tmp_path / "first", *common, "--stop-at", "15", timeout=300).check_ok()
    resumed = run_mpi(2, worker, tmp_path / "second", *common, "--start-at", "15", "--ckpt",
                      str(tmp_path / "first"), timeout=300).check_ok()
    resumed.assert_same_as(straight)
