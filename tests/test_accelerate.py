"""ScaleCom's DDP hook under Hugging Face Accelerate
(horovod_scalecom.torch.accelerate), launched by the real ``accelerate
launch --multi_gpu --num_processes 2`` on CPUs (torchrun underneath,
Accelerator(cpu=True): one gloo group).

With ``gradient_accumulation_steps=2`` and every micro-batch in
``accelerator.accumulate(model)``, the hook runs at the synchronizing
micro-batches only, and the run ends with the very parameters, memories and
step counts of plain DDP + the hook (in the same processes, after
Accelerate's run) accumulating under ``no_sync()`` the same way: bit for
bit, as on 2 ranks gloo's sum of two values is exact and both runs do the
same arithmetic. ``save_state`` /
``load_state`` carry every rank's hook state through the main process's
checkpoint. An Accelerator whose processes each run alone is refused."""

import math
import os
import sys

import numpy as np
import pytest

from mpi import ROOT, WORKERS, Job, requires, run_bounded

requires("torch")
requires("accelerate")
requires("sklearn")

sys.path.insert(0, str(WORKERS))
from accelerate_ddp import ACCUMULATE, MICRO, SAVE_AT  # noqa: E402

WORKER = WORKERS / "accelerate_ddp.py"
EXAMPLE = ROOT / "examples" / "accelerate_ddp.py"


def accelerate_launch(outdir, *args, script=WORKER, timeout=150) -> Job:
    """``accelerate launch --multi_gpu --num_processes 2 script args``, bounded."""
    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", str(script), *args]
    code, output, killed = run_bounded(cmd, env, timeout)
    assert not killed, f"accelerate launch did not end within {timeout} s:\n{output}"
    return Job(code, output, outdir, 2)


def bits(array: np.ndarray) -> np.ndarray:
    """float32 arrays as their bits (so -0.0 and 0.0 differ); others as they are."""
    return array.view(np.uint32) if array.dtype == np.float32 else array


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # Both runs in one launch: Accelerate's, then plain DDP's on the same gloo
    # group (each with a model, optimizer and hook state of its own).
    root = tmp_path_factory.mktemp("accelerate")
    job = accelerate_launch(root, str(root), "accelerate", "plain").check_ok()
    return Job(0, job.output, root / "accelerate", 2), Job(0, job.output, root / "plain", 2)


def test_hook_runs_at_the_synchronizing_steps_only(runs):
    accelerated, plain = runs
    synchronizing = [(m + 1) // ACCUMULATE for m in range(MICRO)]
    for rank in range(2):
        result = accelerated.result(rank)
        assert result["synced"].tolist() == [(m + 1) % ACCUMULATE == 0 for m in range(MICRO)]
        assert result["exchanges"].tolist() == synchronizing
        assert plain.result(rank)["exchanges"].tolist() == synchronizing
        assert all(int(result[k]) == MICRO // ACCUMULATE for k in result if k.startswith("step/"))


def test_accumulating_run_equals_plain_ddp_with_no_sync(runs):
    accelerated, plain = runs
    for rank in range(2):
        mine, theirs = accelerated.result(rank), plain.result(rank)
        keys = [k for k in theirs if k.startswith(("param/", "mem/", "step/"))]
        assert sum(k.startswith("mem/") for k in keys) == 3    # the weights; biases go dense
        for key in keys:
            np.testing.assert_array_equal(bits(mine[key]), bits(theirs[key]),
                                          err_msg=f"{key} on rank {rank}")


def test_save_state_and_load_state_carry_every_ranks_hook_state(runs):
    # The state saved after SAVE_AT micro-batches, loaded back at the end:
    # the micro-batches after it, trained again, end on the same bits.
    accelerated, _ = runs
    for rank in range(2):
        result = accelerated.result(rank)
        assert int(result["loaded_exchanges"]) == SAVE_AT // ACCUMULATE
        for key in result:
            if key.startswith(("param/", "mem/", "step/")):
                np.testing.assert_array_equal(bits(result[f"again/{key}"]), bits(result[key]),
                                              err_msg=f"{key} on rank {rank}")


def test_processes_that_each_run_alone_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("with GPUs, Accelerator() without cpu=True does form one group")
    job = accelerate_launch(tmp_path, str(tmp_path), "alone")
    job.outdir = tmp_path / "alone"
    job.assert_error_on_every_rank(
        "register_scalecom: 2 processes were launched, but this Accelerator runs each alone")


def test_example_trains_and_prints_the_hooks_figures(tmp_path):
    # One epoch of examples/accelerate_ddp.py: the prepared loader gives each
    # of the 2 processes ceil(75 / 2) = 38 of digits' 75 batches of 16, and
    # --accumulate 2 makes that 19 exchanges.
    job = accelerate_launch(tmp_path, "--epochs", "1", "--ratio", "0.01",
                            script=EXAMPLE).check_ok()
    exchanges = math.ceil(math.ceil(1200 / 16) / 2) // 2
    assert "final: 2 processes; the hook's last exchange: bytes_sent" in job.output, job.output
    assert f"exchanges {exchanges}," in job.output, job.output
