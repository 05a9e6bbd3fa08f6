"""Bad input to ScaleCom's DDP hook under torchrun (2 ranks, gloo): a clear
error on every rank, never a hang (tests/workers/ddp_bad_input.py)."""

import pytest

from mpi import WORKERS, requires
from torchrun import run_torchrun

requires("torch")

CASES = {
    "fsdp": "ScaleComHookState got a FullyShardedDataParallel (FSDP)",
    "fsdphook": "instead of a dist.GradBucket",
    "dataparallel": "ScaleComHookState got a DataParallel",
    "pyreducer": 'optimize_ddp = "python_reducer"',
    "othergroup": "process_group differs from the DDP model's",
    "loadsize": "saved by a job of 4 ranks; this job has 2",
    "loadratio": "saved with other knobs: ratio (saved 0.01, here 0.05)",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_on_every_rank(tmp_path, case):
    job = run_torchrun(WORKERS / "ddp_bad_input.py", tmp_path, str(tmp_path), case, timeout=90)
    job.assert_error_on_every_rank(CASES[case])


def test_one_ranks_bad_checkpoint_raises_on_every_rank_at_once(tmp_path):
    # Rank 1 loads rank 0's file: it names the mismatch, rank 0 learns of it
    # from the load's own allgather (not from a timeout).
    job = run_torchrun(WORKERS / "ddp_bad_input.py", tmp_path, str(tmp_path), "loadswapped",
                       timeout=90)
    assert job.returncode != 0, job.output
    assert "saved by rank 0 of 2; it is being loaded on rank 1 of 2" in (job.error(1) or ""), \
        job.output
    assert "rank(s) [1] could not load their ScaleCom state" in (job.error(0) or ""), job.output
