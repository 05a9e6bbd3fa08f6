"""examples/ray_train_ddp.py under the real Ray Train (TorchTrainer, 2 CPU
workers, gloo) on a local Ray cluster that one bounded driver process starts
and stops (tests/workers/ray_train_runs.py). A worker is SIGKILLed mid-run
and Ray Train restarts the group (FailureConfig(max_failures=1)) from the
last checkpoint; the run ends on the NumPy reference of the uninterrupted
training, bit for bit (on 2 ranks gloo's sum of two values is exact, and
the checkpoint holds everything a step reads). Every checkpoint holds every
rank's hook state; the reported metrics carry the hook's figures; the run
resumed on 1 worker refuses the 2 workers' checkpoint, and a checkpoint of 1
worker is refused alike on both ranks of 2 (by file names, before any
collective).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.train")
torch = pytest.importorskip("torch")

from horovod_scalecom import bytes_model                                   # noqa: E402
from horovod_scalecom.check.launch import run_bounded                      # noqa: E402
from horovod_scalecom.config import ScaleComConfig                          # noqa: E402
from horovod_scalecom.torch.ray_train import hook_state_path                # noqa: E402
from example_reference import replay                                        # noqa: E402
from mpi import ROOT, WORKERS                                               # noqa: E402
from workers.ray_train_runs import (EVERY, KILL_AT, LR, RATIO, SEED, STEPS,  # noqa: E402
                                    load_example)

DRIVER_TIMEOUT = 240          # the two runs took 80 to 85 s on 2 busy cores
CHECKPOINT_STEPS = list(range(EVERY, STEPS + 1, EVERY))


@dataclass
class Runs:
    returncode: int
    output: str
    killed: bool
    out: Path
    left_behind: list[int]

    def record(self, name: str) -> dict:
        path = self.out / f"{name}.json"
        if not path.exists():
            raise AssertionError(f"the driver wrote no {path.name}; its output:\n{self.output}")
        return json.loads(path.read_text())


def tagged(tag: str) -> list[int]:
    """The processes whose environment carries SCALECOM_RAY_TEST=tag: the
    driver and everything Ray started for it (they inherit the environment;
    Ray's workers leave the driver's process group, not its environment)."""
    needle = f"SCALECOM_RAY_TEST={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass                     # gone, or not ours
    return found


def end_leftovers(tag: str, grace: float = 15.0) -> list[int]:
    """Wait up to ``grace`` s for Ray's processes to end after the driver,
    then SIGKILL those still there, by pid; returns their pids."""
    deadline = time.monotonic() + grace
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = tagged(tag)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_train")
    # Ray's session holds Unix sockets, whose paths may not exceed 107 bytes.
    temp = tmp_path_factory.mktemp("ray")
    own_temp = len(str(temp)) > 40
    if own_temp:
        temp = Path(tempfile.mkdtemp(prefix="ray"))
    tag = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]),
               OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               SCALECOM_RAY_TEST=tag)
    try:
        code, output, killed = run_bounded(
            [sys.executable, str(WORKERS / "ray_train_runs.py"), str(out), str(temp)],
            env, ROOT, DRIVER_TIMEOUT, grace=10)
    finally:
        left = end_leftovers(tag)
    yield Runs(code, output, killed, out, left)
    if own_temp:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference():
    """The example's training on 2 simulated ranks in this process, each
    averaged gradient from the NumPy reference of ScaleCom: (parameters,
    simulator with every rank's memory)."""
    return replay(load_example(), SEED, STEPS, LR, RATIO)


def trained(runs: Runs, name: str) -> dict:
    record = runs.record(name)
    assert record["error"] is None, f"{record['error']}\n{runs.output}"
    return record


def checkpoint_steps(record: dict) -> list[int]:
    return [metrics["step"] for _, metrics in record["checkpoints"]]


def assert_matches(checkpoint: Path, reference) -> None:
    """The checkpoint's model (rank 0's file) and both ranks' hook memories
    are the reference's, bit for bit."""
    params, sim = reference
    saved = torch.load(checkpoint / "train.pt", weights_only=True)
    assert saved["step"] == STEPS
    for name, ref in params.items():
        np.testing.assert_array_equal(saved["model"][name].numpy().view(np.uint32),
                                      ref.view(np.uint32), err_msg=name)
    for rank in range(2):
        hook = torch.load(checkpoint / f"scalecom-rank{rank}-of-2.pt", weights_only=True)
        assert (hook["rank"], hook["size"]) == (rank, 2)
        compressed = [n for n, t in hook["tensors"].items() if t["memory"] is not None]
        assert sorted(compressed) == ["fc1.weight", "fc2.weight"]
        for name, entry in hook["tensors"].items():
            assert entry["step"] == STEPS, name
            if entry["memory"] is not None:
                np.testing.assert_array_equal(entry["memory"].numpy().view(np.uint32),
                                              sim.memory(name, rank).view(np.uint32),
                                              err_msg=f"memory of {name} on rank {rank}")


def test_the_driver_ends_and_leaves_no_ray_process(runs):
    assert not runs.killed, f"the driver outlived {DRIVER_TIMEOUT} s:\n{runs.output}"
    assert runs.returncode == 0, runs.output
    assert runs.left_behind == [], f"Ray processes outlived the driver: {runs.left_behind}"


def test_every_checkpoint_holds_every_ranks_hook_state(runs):
    # Step 4's checkpoint is the first attempt's, the others the second's.
    record = trained(runs, "killed")
    for path, metrics in record["checkpoints"]:
        path = Path(path)
        assert sorted(p.name for p in path.iterdir()) == [
            "scalecom-rank0-of-2.pt", "scalecom-rank1-of-2.pt", "train.pt"], path
        states = [torch.load(hook_state_path(path, rank, 2), weights_only=True)
                  for rank in range(2)]
        assert [(s["rank"], s["size"]) for s in states] == [(0, 2), (1, 2)]
        for name, entry in states[0]["tensors"].items():
            assert entry["step"] == metrics["step"] == states[1]["tensors"][name]["step"]
        # Each rank's memory is what its own gradients left behind.
        assert not torch.equal(states[0]["tensors"]["fc1.weight"]["memory"],
                               states[1]["tensors"]["fc1.weight"]["memory"])


def test_metrics_carry_the_hook_figures(runs):
    record = trained(runs, "killed")
    config = ScaleComConfig(ratio=RATIO)
    k = {"fc1.weight": config.k(64 * 256), "fc2.weight": config.k(256 * 10)}
    sent = (sum(bytes_model.horovod_path(v, 2) for v in k.values())
            + bytes_model.dense_ring_allreduce(256 + 10, 2))
    dense = bytes_model.dense_ring_allreduce(64 * 256 + 256 + 256 * 10 + 10, 2)
    for metrics in [record["metrics"]] + [m for _, m in record["checkpoints"]]:
        leader = (metrics["step"] - 1) % 2           # the step's leader: t mod n
        for name, k_name in k.items():
            assert metrics[f"scalecom/{name}/k"] == k_name
            assert metrics[f"scalecom/{name}/leader"] == leader
        assert metrics["scalecom/bytes_sent"] == pytest.approx(sent)
        assert metrics["scalecom/dense_bytes"] == pytest.approx(dense)
        assert metrics["scalecom/compression"] == pytest.approx(dense / sent)
        assert metrics["scalecom/nonfinite_kept"] == 0
    assert record["metrics"]["step"] == STEPS


def test_killed_worker_resumes_and_ends_on_the_reference_bit_for_bit(runs, reference):
    # Rank 1 dies two reports after the checkpoint of step 4, and a report
    # waits until Ray Train's controller has taken the worker's previous one:
    # both ranks' reports of step 4 were taken, so the checkpoint counts. The
    # restarted workers go on from it and report those of steps 8 and 12 once.
    record = trained(runs, "killed")
    assert (runs.out / "store" / "killed.killed").exists()
    assert f"rank 1: killed at step {KILL_AT}" in runs.output, runs.output
    last = max(s for s in CHECKPOINT_STEPS if s <= KILL_AT)
    assert f"resumed from the checkpoint of step {last}" in runs.output, runs.output
    assert checkpoint_steps(record) == CHECKPOINT_STEPS
    assert_matches(Path(record["checkpoint"]), reference)


def test_restore_on_another_number_of_workers_is_refused(runs):
    # The same run name on 1 worker: Ray Train restores the run and hands the
    # 2 workers' checkpoint to the train function, which refuses it.
    record = runs.record("resized")
    assert record["error"] is not None, "1 worker resumed the hook states of 2"
    assert ("holds the ScaleCom hook states of a job of 2 workers; this job has 1"
            in record["error"]), record["error"]
    assert "ScalingConfig(num_workers=2)" in record["error"]


def test_every_rank_judges_a_checkpoint_alike(tmp_path):
    # A checkpoint of 1 worker resumed on 2: rank 1 has no file; both ranks
    # must raise the same error before load_state_dict's collective, or
    # rank 0 would wait there for rank 1.
    (tmp_path / "scalecom-rank0-of-1.pt").write_bytes(b"")
    errors = []
    for rank in range(2):
        with pytest.raises(ValueError, match="a job of 1 workers; this job has 2") as info:
            hook_state_path(tmp_path, rank, 2)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    (tmp_path / "scalecom-rank0-of-1.pt").unlink()
    (tmp_path / "scalecom-rank1-of-3.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"incomplete: .* rank\(s\) \[0, 2\] of 3"):
        hook_state_path(tmp_path, 1, 3)
    (tmp_path / "scalecom-rank0-of-2.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"jobs of \[2, 3\] workers"):
        hook_state_path(tmp_path, 0, 2)
    with pytest.raises(FileNotFoundError, match="no ScaleCom hook state"):
        hook_state_path(tmp_path / "empty", 0, 2)
