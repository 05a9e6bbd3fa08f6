"""Train an MLP on real handwritten digits with PyTorch DDP and ScaleCom's hook.

    torchrun --standalone --nproc-per-node 4 examples/pytorch_ddp_digits.py [--dense]

No Horovod: torch.distributed over gloo, and ScaleCom as DDP's communication
hook, ``ScaleComHookState(model, ratio=0.01)`` with every other knob at its
default. The recipe and the data are examples/pytorch_digits.py's: SGD with
lr = 0.1 x world size and momentum 0.9 (cosine decay), scikit-learn's 8x8
digits (they ship inside the package: 1,200 images train, 597 test), a
global batch of 16 x n of which rank r trains on the r-th sixteen.
``--dense`` trains the same model with DDP's own allreduce.
"""

import argparse
import gc
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.tasks import digits, make_model  # noqa: E402


BATCH = 16  # per rank: a step's global batch is 16 x world size


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.1, help="per rank; x world size")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true", help="DDP's own allreduce")
    parser.add_argument("--json", help="rank 0 writes the run's figures here")
    return parser.parse_args()


def join_gloo_group():
    """Joins the gloo group of torchrun's (or mpirun's) processes; returns its size."""
    # torchrun sets RANK and WORLD_SIZE; under mpirun, Open MPI's variables say the same.
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    n = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=rank, world_size=n)
    return n


def make_ddp_model(args):
    """The model in DDP, with ScaleCom's hook registered (state None with --dense)."""
    model = DDP(make_model("digits", "mlp", args.seed))     # DDP broadcasts rank 0's weights
    state = None
    if not args.dense:
        state = ScaleComHookState(model, ratio=args.ratio)
        model.register_comm_hook(state, scalecom_hook)
    return model, state


def make_schedule(opt, args, per_epoch):
    """Cosine decay over the whole run."""
    total = args.epochs * per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def train(model, opt, schedule, data, args, per_epoch):
    """Returns the test accuracy after each epoch."""
    x, y, x_test, y_test = data
    rank, n = dist.get_rank(), dist.get_world_size()
    accuracy = []
    for epoch in range(args.epochs):
        # The same permutation on every rank, and the same as examples/pytorch_digits.py's.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 * args.seed + epoch))
        for i in range(per_epoch):
            mine = perm[i * BATCH * n:(i + 1) * BATCH * n][rank * BATCH:(rank + 1) * BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[mine]), y[mine]).backward()
            opt.step()
            schedule.step()
        with torch.no_grad():
            accuracy.append((model.module(x_test).argmax(1) == y_test).float().mean().item())
        if rank == 0 and (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  test accuracy {accuracy[-1]:.3f}", flush=True)
    return accuracy


def report(args, state, accuracy):
    """Rank 0 prints the final line and writes --json."""
    stats = state.stats() if state is not None else {}
    if dist.get_rank() != 0:
        return
    n = dist.get_world_size()
    method = "DDP dense" if args.dense else f"DDP + ScaleCom hook, ratio={args.ratio}"
    sent = (f"; {stats['compression']:.0f}x fewer gradient bytes than dense"
            if stats else "")
    print(f"final: {method} on {n} ranks, lr {args.lr * n:g}, test accuracy "
          f"{accuracy[-1]:.3f}{sent}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(args), "ranks": n, "test_acc": accuracy,
                       "final_acc": accuracy[-1],
                       "compression": stats.get("compression")}, f)


def main():
    args = parse_args()
    n = join_gloo_group()
    torch.set_num_threads(1)
    data = tuple(map(torch.from_numpy, digits()))
    model, state = make_ddp_model(args)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr * n, momentum=0.9)
    per_epoch = len(data[0]) // (BATCH * n)
    schedule = make_schedule(opt, args, per_epoch)
    accuracy = train(model, opt, schedule, data, args, per_epoch)
    report(args, state, accuracy)
    # torch's Python comm hooks (PowerSGD's too) can abort the process at exit
    # when DDP's reducer outlives destroy_process_group(): drop the model first.
    del model, state, opt
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
