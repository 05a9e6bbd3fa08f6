"""ScaleComCallback (horovod_scalecom.torch.lightning) under the real
PyTorch Lightning: examples/pytorch_lightning_ddp.py's module, a Trainer on
2 CPU processes that Lightning starts itself (DDPStrategy over gloo).

Against the NumPy reference of ScaleCom, bit for bit: the parameters after
20 steps and every rank's memory (on 2 ranks gloo's sum of two values is
exact, and the reference below replays Lightning's DistributedSampler
batches with the same torch kernels on one thread). A run stopped after 2
epochs, checkpointed by Lightning's ModelCheckpoint and resumed ends with
the very parameters and memories of the uninterrupted one; the logged
metrics carry the hook's figures; a checkpoint of another number of ranks
is refused on every rank; with accumulate_grad_batches the hook runs once per
optimizer step."""

import os
import sys

import numpy as np
import pytest

from horovod_scalecom.config import ScaleComConfig, num_selected
from horovod_scalecom.reference import HorovodPathSimulator
from mpi import ROOT, WORKERS, Job, requires, run_bounded

requires("torch")
requires("lightning")
requires("sklearn")

sys.path.insert(0, str(WORKERS))
from lightning_ddp import BATCHES, EPOCHS, LR, RATIO, SEED  # noqa: E402

STEPS = EPOCHS * BATCHES


def run_worker(outdir, devices, *phases, env=None, timeout=150) -> str:
    """tests/workers/lightning_ddp.py as a user runs a Lightning script:
    ``python script.py`` (Lightning starts the other ranks), bounded."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]),
                    OMP_NUM_THREADS="1", **(env or {}))
    for key in ("LOCAL_RANK", "MASTER_PORT", "WORLD_SIZE", "RANK"):
        full_env.pop(key, None)        # a fresh launch: Lightning picks a free port itself
    cmd = [sys.executable, str(WORKERS / "lightning_ddp.py"), str(outdir), str(devices), *phases]
    code, output, killed = run_bounded(cmd, full_env, timeout)
    assert not killed, f"the Lightning job did not end within {timeout} s:\n{output}"
    assert code == 0, f"the Lightning job failed ({code}):\n{output}"
    return output


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A 1-rank job's checkpoint, then the 2-rank job: uninterrupted, stopped
    and resumed, resumed from the 1-rank checkpoint, and accumulating."""
    root = tmp_path_factory.mktemp("lightning")
    run_worker(root / "one", 1, "half")
    foreign = {"FOREIGN_CKPT": str(root / "one" / "ckpt" / "last.ckpt")}
    phases = ("full", "half", "resumed", "foreign", "accumulate")
    output = run_worker(root / "two", 2, *phases, env=foreign)
    return {phase: Job(0, output, root / "two" / phase, 2) for phase in phases}


@pytest.fixture(scope="module")
def reference():
    """The same training on 2 simulated ranks in this process, every
    averaged gradient from the NumPy reference: (parameters, simulator)."""
    import torch
    from torch.utils.data import DistributedSampler, TensorDataset

    from benchmarks.tasks import digits, make_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the workers' count: the same sums, the same bits
    try:
        x, y = map(torch.from_numpy, digits()[:2])
        net = make_model("digits", "mlp", SEED)
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
        sim = HorovodPathSimulator(2, ScaleComConfig(ratio=RATIO))
        # What Lightning puts in place of the loader's RandomSampler.
        samplers = [DistributedSampler(TensorDataset(x, y), num_replicas=2, rank=r,
                                       shuffle=True, seed=0) for r in range(2)]
        for epoch in range(EPOCHS):
            for sampler in samplers:
                sampler.set_epoch(epoch)
            orders = [list(sampler) for sampler in samplers]
            for b in range(BATCHES):
                grads = []
                for order in orders:
                    mine = order[b * 16:(b + 1) * 16]
                    net.zero_grad()
                    torch.nn.functional.cross_entropy(net(x[mine]), y[mine]).backward()
                    grads.append({n: p.grad.reshape(-1).numpy().copy()
                                  for n, p in net.named_parameters()})
                for name, p in net.named_parameters():
                    mean = sim.step(f"net.{name}", [g[name] for g in grads]).outputs[0]
                    p.grad = torch.from_numpy(mean.reshape(p.shape).copy())
                opt.step()
        params = {n: p.detach().numpy().copy() for n, p in net.named_parameters()}
    finally:
        torch.set_num_threads(threads)
    return params, sim


def assert_bits(got, want, what):
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=what)


def test_lightning_run_matches_the_reference(jobs, reference):
    params, sim = reference
    for rank in range(2):
        result = jobs["full"].result(rank)
        for name, want in params.items():
            assert_bits(result[f"param/{name}"], want, f"{name} on rank {rank}")
        memories = [k for k in result if k.startswith("mem/")]
        assert len(memories) == 3, memories          # the three weights; the biases go dense
        for key in memories:
            assert_bits(result[key], sim.memory(key[4:], rank), f"{key} on rank {rank}")
        assert all(int(result[k]) == STEPS for k in result if k.startswith("step/"))


def test_resumed_from_lightning_checkpoint_ends_as_the_uninterrupted_run(jobs):
    for rank in range(2):
        half, resumed, full = (jobs[p].result(rank) for p in ("half", "resumed", "full"))
        assert all(int(half[k]) == STEPS // 2 for k in half if k.startswith("step/"))
        assert int(resumed["global_step"]) == STEPS
        for key in full:
            if key.startswith(("param/", "mem/", "step/")):
                np.testing.assert_array_equal(resumed[key], full[key],
                                              err_msg=f"{key} on rank {rank}")


def test_logged_metrics_carry_the_hooks_figures(jobs):
    cfg = ScaleComConfig(ratio=RATIO)
    k = sum(num_selected(n, cfg.ratio) for n in (64 * 256, 256 * 256, 256 * 10))
    for rank in range(2):
        result = jobs["full"].result(rank)
        logged = {key[len("logged/scalecom/"):]: float(v) for key, v in result.items()
                  if key.startswith("logged/scalecom/")}
        assert logged["exchanges"] == STEPS
        assert logged["leader"] == (STEPS - 1) % 2 == int(result["stats/leader"])
        assert logged["k"] == k == int(result["stats/k"])
        for key in ("bytes_sent", "dense_bytes"):
            assert logged[key] == float(result[f"stats/{key}"])
        assert logged["compression"] == pytest.approx(float(result["stats/compression"]),
                                                      rel=1e-6)   # logged as float32
        assert logged["bytes_sent"] < logged["dense_bytes"] / 5
    # The logger (rank 0's CSV) got every step's figures.
    csv = jobs["full"].outdir / "logs" / "version_0" / "metrics.csv"
    lines = csv.read_text().splitlines()
    column = lines[0].split(",").index("scalecom/exchanges")
    assert [float(line.split(",")[column]) for line in lines[1:]] == list(range(1, STEPS + 1))


def test_checkpoint_of_another_world_size_refused_on_every_rank(jobs):
    # The worker records the fit's error per rank and goes on to end the job.
    job = jobs["foreign"]
    for rank in range(2):
        err = job.error(rank)
        assert err is not None, f"rank {rank} trained from a 1-rank checkpoint:\n{job.output}"
        assert ("ValueError: this checkpoint holds the ScaleCom hook states of 1 rank(s); "
                "this job has 2") in err, err
        assert not (job.outdir / f"rank{rank}.npz").exists()


def test_accumulating_batches_exchange_nothing(jobs):
    # accumulate_grad_batches=2 over 5 batches an epoch: Lightning steps after
    # batches 2, 4 and 5 (the epoch's last), and runs the others under DDP's
    # no_sync(): one exchange per optimizer step, one logged figure each.
    for rank in range(2):
        result = jobs["accumulate"].result(rank)
        assert int(result["global_step"]) == EPOCHS * 3
        assert all(int(result[k]) == EPOCHS * 3 for k in result if k.startswith("step/"))
        assert float(result["logged/scalecom/exchanges"]) == EPOCHS * 3
