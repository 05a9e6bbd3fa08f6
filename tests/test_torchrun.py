"""examples/pytorch_ddp_torchrun.py under the real torchrun (2 ranks, gloo):
the run against the NumPy reference, and a worker killed mid-run that
torch.distributed.elastic restarts (--max-restarts 1) from the last
checkpoint, ending with the very parameters and hook memories of a run that
never stopped. Bit for bit: on 2 ranks gloo's sum of two values is exact and
every other operation is the same in the job and in the reference, and the
checkpoint holds everything a step reads (parameters, momentum buffers, the
hook's memory, step counters and clip levels; the data is a function of the
step and the rank)."""

import importlib.util

import numpy as np
import pytest

from mpi import requires
from torchrun import EXAMPLES, run_torchrun

requires("torch")
from example_reference import replay  # noqa: E402

EXAMPLE = EXAMPLES / "pytorch_ddp_torchrun.py"
STEPS, EVERY, RATIO, LR, SEED = 12, 4, 0.05, 0.05, 0
ARGS = ("--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--ratio", str(RATIO),
        "--lr", str(LR), "--seed", str(SEED), "--share-timeout", "30")


def load_example():
    spec = importlib.util.spec_from_file_location("pytorch_ddp_torchrun", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    """The example's training on 2 simulated ranks in this process, each
    averaged gradient from the NumPy reference of ScaleCom: (parameters,
    simulator with every rank's memory)."""
    return replay(load_example(), SEED, STEPS, LR, RATIO)


def assert_matches(out_dir, reference):
    import torch
    params, sim = reference
    for rank in range(2):
        final = torch.load(out_dir / f"final-rank{rank}.pt", weights_only=True)
        for name, ref in params.items():
            got = final["params"][name].numpy()
            np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32),
                                          err_msg=f"{name} on rank {rank}")
        for name, saved in final["scalecom"]["tensors"].items():
            assert saved["step"] == STEPS, name
            if saved["memory"] is not None:
                np.testing.assert_array_equal(saved["memory"].numpy().view(np.uint32),
                                              sim.memory(name, rank).view(np.uint32),
                                              err_msg=f"memory of {name} on rank {rank}")
    assert sum(t["memory"] is not None for t in final["scalecom"]["tensors"].values()) == 2


@pytest.mark.parametrize("compile_args", [(), ("--compile", "--compile-backend", "aot_eager")],
                         ids=["eager", "compiled"])
def test_torchrun_run_matches_the_reference(tmp_path, reference, compile_args):
    # Compiled with aot_eager, the model runs torch's eager kernels: the same bits.
    job = run_torchrun(EXAMPLE, tmp_path, *ARGS, "--checkpoint-dir", str(tmp_path / "ckpt"),
                       "--out", str(tmp_path / "out"), *compile_args, timeout=90).check_ok()
    assert "resumed" not in job.output
    assert_matches(tmp_path / "out", reference)


def test_killed_worker_resumes_from_checkpoint_bit_for_bit(tmp_path, reference):
    # Rank 1 is SIGKILLed before step 6 of the first attempt; torchrun stops
    # rank 0, starts both again, and they resume from step 4's checkpoint.
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: torch 2.13's torchrun otherwise
    # hands the restarted workers a store that still holds the first
    # attempt's gloo addresses, and they cannot connect (the example warns).
    job = run_torchrun(EXAMPLE, tmp_path, *ARGS, "--checkpoint-dir", str(tmp_path / "ckpt"),
                       "--out", str(tmp_path / "out"), "--fail-at-step", "6", "--fail-rank", "1",
                       torchrun_args=("--max-restarts", "1", "--monitor-interval", "0.2"),
                       env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}, timeout=120).check_ok()
    assert "warning: --max-restarts needs" not in job.output
    assert "rank 1: killed at step 6" in job.output, job.output
    assert job.output.count("resumed from the checkpoint of step 4") == 1, job.output
    assert_matches(tmp_path / "out", reference)


def test_without_restarts_the_killed_worker_ends_the_job(tmp_path):
    # --max-restarts 0: torchrun stops the survivor and reports the failure;
    # nothing waits on the dead rank.
    job = run_torchrun(EXAMPLE, tmp_path, *ARGS, "--checkpoint-dir", str(tmp_path / "ckpt"),
                       "--fail-at-step", "6", timeout=90)
    assert job.returncode != 0, job.output
    assert "Signal 9 (SIGKILL)" in job.output, job.output


def test_resume_on_another_number_of_ranks_starts_the_memory_empty(tmp_path):
    # 2 ranks to step 8, then the same checkpoints on 1 rank to step 12
    # (the last --steps wins).
    ckpt = ("--checkpoint-dir", str(tmp_path / "ckpt"))
    run_torchrun(EXAMPLE, tmp_path, *ARGS, "--steps", "8", *ckpt, timeout=90).check_ok()
    job = run_torchrun(EXAMPLE, tmp_path, *ARGS, "--steps", "12", *ckpt, "--out",
                       str(tmp_path / "out"), nproc=1, timeout=90).check_ok()
    assert "the checkpoint is from 2 ranks, this job has 1" in job.output, job.output
    assert "resumed from the checkpoint of step 8" in job.output, job.output
    import torch
    final = torch.load(tmp_path / "out" / "final-rank0.pt", weights_only=True)
    assert final["scalecom"]["size"] == 1
    assert all(t["step"] == 4 for t in final["scalecom"]["tensors"].values())
