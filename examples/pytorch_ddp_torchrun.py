"""Train with torchrun, DDP and ScaleCom's hook; checkpoint, and resume after a failure.

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc-per-node 2 \\
        --max-restarts 1 examples/pytorch_ddp_torchrun.py --checkpoint-dir ckpt [--fail-at-step 7] [--compile]

No Horovod: torch.distributed over gloo (CPU), ScaleCom as DDP's
communication hook. Every ``--checkpoint-every`` steps each rank saves the
model, the optimizer and the hook's state (its error-feedback memory, step
counters and clip levels: they are per rank, so each rank saves its own file),
and rank 0 marks the checkpoint complete once every rank has written. When a
worker fails, torchrun (torch.distributed.elastic, ``--max-restarts``) stops
the others and starts all of them again; they resume from the last complete
checkpoint, as does a job started again by hand with the same
``--checkpoint-dir``. (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: in torch 2.13
torchrun's workers otherwise read the previous attempt's addresses from the
store it shares with them, and a restarted job cannot connect.) The data of
a step depends on the step and the rank only, so the resumed job ends with
the very parameters of a job that never stopped. A job that resumes on
another number of ranks (``--nnodes MIN:MAX``, or started again with another
``--nproc-per-node``) takes the model and optimizer from rank 0's file and
starts ScaleCom's memory empty: it is per rank.

``--fail-at-step N`` kills rank ``--fail-rank`` (SIGKILL, as an out-of-memory
kill would) before step N of the first attempt (torchrun's
TORCHELASTIC_RESTART_COUNT is 0), to watch a restart. ``--compile`` runs the
model through torch.compile (inductor; ``--compile-backend`` picks another).
``--out DIR``: each rank saves its final parameters and hook state there.
"""

import argparse
import gc
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

FEATURES, HIDDEN, CLASSES, BATCH = 64, 256, 10, 32


class Net(torch.nn.Module):
    """Two layers; both weights have more than min_numel (1024) elements, so
    ScaleCom compresses them, and the biases go dense."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(FEATURES, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-dir", default="scalecom-checkpoints")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--share-timeout", type=float, default=120.0,
                        help="seconds ScaleCom waits for another rank before it raises")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DDP model")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--fail-at-step", type=int, default=None)
    parser.add_argument("--fail-rank", type=int, default=1)
    parser.add_argument("--out", help="each rank saves its final parameters and hook state here")
    return parser.parse_args(argv)


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


# -- checkpoints: one file per rank, a marker once every rank has written -----------

def checkpoint_path(root: Path, step: int, rank: int) -> Path:
    return root / f"step{step:06d}" / f"rank{rank}.pt"


def save_checkpoint(root: Path, step: int, model: DDP, opt: torch.optim.Optimizer,
                    state: ScaleComHookState) -> None:
    """Every rank writes its file; after a barrier rank 0 points ``latest`` at
    the step (a checkpoint some rank never finished is never resumed from)
    and removes the older ones."""
    rank = dist.get_rank()
    path = checkpoint_path(root, step, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "world_size": dist.get_world_size(),
                "model": model.module.state_dict(), "optimizer": opt.state_dict(),
                "scalecom": state.state_dict()}, tmp)
    os.replace(tmp, path)            # a killed writer leaves no half file behind
    dist.barrier()
    if rank == 0:
        marker = root / "latest.tmp"
        marker.write_text(f"{step} {dist.get_world_size()}")
        os.replace(marker, root / "latest")
        for old in root.glob("step*"):
            if old.name != path.parent.name:
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()


def latest(root: Path) -> tuple[int, int]:
    """(step, world size) of the last complete checkpoint; (0, 0) when there is none."""
    marker = root / "latest"
    if not marker.exists():
        return 0, 0
    step, world = marker.read_text().split()
    return int(step), int(world)


def train(args: argparse.Namespace) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    root = Path(args.checkpoint_dir)
    start, saved_world = latest(root)
    saved = None
    if start:
        # Another world size (torchrun --nnodes MIN:MAX let the job shrink or
        # grow): the model and optimizer are the same on every rank, rank 0's
        # file has them; ScaleCom's memory is per rank and starts empty.
        same = saved_world == world
        saved = torch.load(checkpoint_path(root, start, rank if same else 0), weights_only=True)
    net = make_model(args.seed)
    if saved is not None:
        net.load_state_dict(saved["model"])
    model = DDP(net)
    state = ScaleComHookState(model, ratio=args.ratio, share_timeout=args.share_timeout)
    model.register_comm_hook(state, scalecom_hook)
    opt = make_optimizer(model, args.lr)
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])
        if saved_world == world:
            # Collective: every rank checks its file (rank, world size, knobs, steps).
            state.load_state_dict(saved["scalecom"])
        elif rank == 0:
            print(f"the checkpoint is from {saved_world} ranks, this job has {world}: "
                  "ScaleCom's memory starts empty (it is per rank)", flush=True)
        if rank == 0:
            print(f"resumed from the checkpoint of step {start}", flush=True)
    run = torch.compile(model, backend=args.compile_backend) if args.compile else model
    first_try = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    loss = None
    for step in range(start, args.steps):
        if step == args.fail_at_step and rank == args.fail_rank and first_try:
            print(f"rank {rank}: killed at step {step} (--fail-at-step)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch(args.seed, step, rank)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}  "
                  f"{state.stats()['compression']:.0f}x fewer gradient bytes", flush=True)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save_checkpoint(root, step + 1, model, opt, state)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"params": {n: p.detach().clone() for n, p in net.named_parameters()},
                    "scalecom": state.state_dict()}, out / f"final-rank{rank}.pt")
    if rank == 0:
        last = f", last loss {loss.item():.4f}" if loss is not None else " (all done before)"
        print(f"final: {args.steps} steps on {world} ranks{last}", flush=True)
    # torch's Python comm hooks can abort the process at exit when DDP's
    # reducer outlives destroy_process_group(): drop the model first.
    del run, model, state, opt
    gc.collect()


def warn_shared_store() -> None:
    """torchrun hands its workers the rendezvous's own TCPStore (unless
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), and in torch 2.13 a restarted
    worker reads the previous attempt's gloo addresses from it: every
    restart then fails with "Gloo connectFullMesh failed ... Connection
    refused" (pytorch/pytorch#135712, #167288). Say so before it happens."""
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" \
            and os.environ.get("RANK") == "0":
        print("warning: --max-restarts needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in "
              "torchrun's environment: with the shared store, restarted workers cannot "
              "connect to each other", flush=True)


def main() -> None:
    args = parse_args()
    warn_shared_store()
    dist.init_process_group("gloo")     # torchrun's env:// variables
    try:
        train(args)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
