"""Train with Ray Train, DDP and ScaleCom's hook; checkpoint, and resume after a worker dies.

    python examples/ray_train_ddp.py --workers 2 --steps 40 --checkpoint-every 10 [--kill-at-step 25]

No Horovod: Ray Train's TorchTrainer starts the workers and their
torch.distributed group (gloo, CPU), ``ray.train.torch.prepare_model`` wraps
the model in DDP, and ScaleCom is DDP's communication hook. Every step each
worker reports its loss and the hook's figures (bytes, compression, each
compressed parameter's k and leader); every ``--checkpoint-every`` steps the
report carries a checkpoint: every worker writes its own hook state (its
error-feedback memory, step counters and clip levels are its own) and rank 0
the model and optimizer into a directory of its own, and Ray Train merges
them into one checkpoint, which counts once every worker has reported it.

``--kill-at-step N`` kills worker ``--kill-rank`` (SIGKILL, as an
out-of-memory kill would) before step N, once (a marker file next to the
run's storage says it happened). With ``--max-failures 1`` (the default) Ray
Train stops the other workers, starts the group again, and the train
function resumes from the last checkpoint (``ray.train.get_checkpoint()``);
each worker loads its own hook state. The data of a step depends on the step
and the rank alone, so the resumed run ends on the very parameters of a run
that never stopped. Started again with the same ``--name`` and
``--storage-path``, Ray Train restores the run and the job goes on from its
latest checkpoint; with another ``--workers`` the hook's state is refused
(it is per worker).

``--address`` joins a running Ray cluster; without it the script starts a
local one with ``--workers`` CPUs.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook
from horovod_scalecom.torch.ray_train import hook_metrics, load_hook_state, save_hook_state

FEATURES, HIDDEN, CLASSES, BATCH = 64, 256, 10, 32
TRAIN_FILE = "train.pt"          # rank 0's: the step, the model and the optimizer


class Net(torch.nn.Module):
    """Two layers; both weights have more than min_numel (1024) elements, so
    ScaleCom compresses them, and the biases go dense."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(FEATURES, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def make_model(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    # Momentum: its buffers are optimizer state that the checkpoint must carry too.
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def batch(seed: int, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s batch of step ``step``: a function of them alone, so a
    resumed run sees the batches the uninterrupted run saw (a real loader
    would save its position, or use a sampler seeded by the epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(BATCH, FEATURES, generator=g)
    teacher = torch.Generator().manual_seed(seed)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=teacher)).argmax(1)
    return x, y


def report(metrics: dict[str, Any], step: int, net: torch.nn.Module,
           opt: torch.optim.Optimizer, state: ScaleComHookState, checkpoint: bool) -> None:
    """ray.train.report on every worker (it is a barrier); with ``checkpoint``,
    each worker's directory holds its hook state, rank 0's also the module
    ``net`` (inside DDP) and the optimizer (the same on every rank), and Ray
    merges the directories."""
    import ray.train

    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_hook_state(state, directory)
        if ray.train.get_context().get_world_rank() == 0:
            torch.save({"step": step, "model": net.state_dict(),
                        "optimizer": opt.state_dict()}, Path(directory) / TRAIN_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def train_loop(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs (config: the keys of train_config())."""
    import ray.train
    import ray.train.torch

    # One thread, as Ray gives each worker one CPU: the sums, and so the bits,
    # do not depend on the machine.
    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    net = make_model(config["seed"])
    # DDP over gloo; on a single worker Ray leaves the module as it is (and
    # ScaleCom would have nothing to exchange).
    model = ray.train.torch.prepare_model(net)
    state = ScaleComHookState(model, ratio=config["ratio"],
                              share_timeout=config["share_timeout"])     # collective
    if isinstance(model, DistributedDataParallel):
        model.register_comm_hook(state, scalecom_hook)
    opt = make_optimizer(net, config["lr"])
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            # First: it refuses a checkpoint of another number of workers on
            # every rank alike, before anything else is loaded.
            load_hook_state(state, directory)                            # collective
            saved = torch.load(Path(directory) / TRAIN_FILE, weights_only=True)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["step"]
        if rank == 0:
            print(f"resumed from the checkpoint of step {start}", flush=True)
    for step in range(start, config["steps"]):
        if step == config["kill_at_step"] and rank == config["kill_rank"]:
            marker = Path(config["kill_marker"])
            if not marker.exists():
                marker.write_text(f"killed rank {rank} before step {step}\n")
                print(f"rank {rank}: killed at step {step} (--kill-at-step)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch(config["seed"], step, rank)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        done = step + 1
        metrics = {"step": done, "loss": loss.item(), **hook_metrics(state)}
        report(metrics, done, net, opt, state,
               checkpoint=done % config["checkpoint_every"] == 0 or done == config["steps"])
    # torch's Python comm hooks can abort the process at exit when DDP's
    # reducer outlives destroy_process_group() (Ray's backend calls it after
    # this function returns): drop the model first.
    del model, net, state, opt
    gc.collect()


def train_config(steps: int = 40, checkpoint_every: int = 10, ratio: float = 0.01,
                 lr: float = 0.05, seed: int = 0, share_timeout: float = 60.0,
                 kill_at_step: Optional[int] = None, kill_rank: int = 1,
                 kill_marker: str = "") -> dict[str, Any]:
    """train_loop's configuration; ``kill_marker``: the file that says the
    kill happened (needed with ``kill_at_step``: a restarted worker reads it)."""
    if kill_at_step is not None and not kill_marker:
        raise ValueError("train_config: kill_at_step needs a kill_marker path (the file "
                         "that keeps the restarted worker from killing itself again)")
    return {"steps": steps, "checkpoint_every": checkpoint_every, "ratio": ratio, "lr": lr,
            "seed": seed, "share_timeout": share_timeout, "kill_at_step": kill_at_step,
            "kill_rank": kill_rank, "kill_marker": kill_marker}


def make_trainer(config: dict[str, Any], workers: int, storage_path: str, name: str,
                 max_failures: int = 1, timeout_s: int = 60):
    """A TorchTrainer of ``workers`` CPU workers running train_loop(config);
    ``timeout_s``: torch.distributed's timeout for the workers' group."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
        torch_config=TorchConfig(backend="gloo", timeout_s=timeout_s),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--share-timeout", type=float, default=60.0,
                        help="seconds ScaleCom waits for another worker before it raises")
    parser.add_argument("--kill-at-step", type=int, default=None,
                        help="kill worker --kill-rank before this step, once")
    parser.add_argument("--kill-rank", type=int, default=1)
    parser.add_argument("--max-failures", type=int, default=1,
                        help="restarts Ray Train allows (FailureConfig(max_failures))")
    parser.add_argument("--storage-path", default="ray_results",
                        help="where Ray Train keeps the run and its checkpoints")
    parser.add_argument("--name", default="scalecom-ddp", help="the run's name (RunConfig)")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster to join (default: start a local one)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    import ray

    # A step takes milliseconds here and every step reports; Ray Train's
    # controller takes one report per worker each time it polls them (every
    # 2 s by default), and a report waits for the previous one to be taken.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    storage = Path(args.storage_path).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    config = train_config(args.steps, args.checkpoint_every, args.ratio, args.lr, args.seed,
                          args.share_timeout, args.kill_at_step, args.kill_rank,
                          str(storage / f"{args.name}.killed"))
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False)
    try:
        result = make_trainer(config, args.workers, str(storage), args.name,
                              args.max_failures).fit()
    finally:
        ray.shutdown()
    figures = {k: v for k, v in result.metrics.items() if k.startswith("scalecom/")}
    print(f"final: step {result.metrics['step']}, loss {result.metrics['loss']:.4f}, "
          f"checkpoint {result.checkpoint.path}")
    for key, value in sorted(figures.items()):
        print(f"  {key} = {value:.6g}" if isinstance(value, float) else f"  {key} = {value}")


if __name__ == "__main__":
    main()
