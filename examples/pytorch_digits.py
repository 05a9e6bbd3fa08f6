"""Train an MLP on real handwritten digits with Horovod and ScaleCom's defaults.

    mpirun -np 4 python examples/pytorch_digits.py [--dense] [--no-clip] [--lr-warmup-epochs 5]

The standard Horovod recipe, untuned: SGD with lr = 0.1 x hvd.size() and
momentum 0.9 (cosine decay over the run), ``ScaleCom(model, ratio=0.01)``
with every other knob at its default. The data are scikit-learn's 8x8 digits,
which ship inside the package (nothing is downloaded): 1,200 images train,
597 test. Every step takes a global batch of 16 x n images and rank r trains
on its r-th sixteen, exactly the split of the convergence study's simulated
workers (``benchmarks.convergence --task digits``), so the
two can be compared row by row (docs/convergence.md).
"""

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import torch

import horovod.torch as hvd
from horovod_scalecom.torch import ScaleCom
from horovod_scalecom.config import DEFAULTS

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.tasks import digits, make_model  # noqa: E402


BATCH = 16  # per rank: a step's global batch is 16 x hvd.size()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta)
    parser.add_argument("--lr", type=float, default=0.1, help="per rank; x hvd.size()")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr-warmup-epochs", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true", help="plain Horovod, no compression")
    parser.add_argument("--no-clip", action="store_true",
                        help="ScaleCom without its relative clip (clip_factor=None)")
    parser.add_argument("--json", help="rank 0 writes the run's figures here")
    return parser.parse_args()


def make_optimizer(model, args):
    """ScaleCom (None with --dense) as the compression of Horovod's DistributedOptimizer."""
    compression = None
    if not args.dense:
        extra = {"clip_factor": None} if args.no_clip else {}
        compression = ScaleCom(model, ratio=args.ratio, beta=args.beta, **extra)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.9),
        named_parameters=model.named_parameters(),
        compression=compression or hvd.Compression.none)
    return compression, opt


def make_schedule(opt, args, per_epoch):
    """Cosine decay over the whole run, after an optional linear warm-up."""
    total = args.epochs * per_epoch
    ramp = max(1, round(args.lr_warmup_epochs * per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / ramp) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def train(model, opt, schedule, data, args, per_epoch):
    """Returns the test accuracy after each epoch and the warnings the steps raised."""
    x, y, x_test, y_test = data
    n, rank = hvd.size(), hvd.rank()
    warned = []
    accuracy = []
    for epoch in range(args.epochs):
        # Every rank draws the same permutation, seeded as the convergence
        # study seeds its simulated workers, so the two runs see the same batches.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 * args.seed + epoch))
        for i in range(per_epoch):
            mine = perm[i * BATCH * n:(i + 1) * BATCH * n][rank * BATCH:(rank + 1) * BATCH]
            opt.zero_grad()
            # The divergence guard speaks through warnings: kept for the report.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.nn.functional.cross_entropy(model(x[mine]), y[mine]).backward()
                opt.step()
            warned += [str(w.message) for w in caught]
            schedule.step()
        with torch.no_grad():
            accuracy.append((model(x_test).argmax(1) == y_test).float().mean().item())
        if rank == 0 and (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  test accuracy {accuracy[-1]:.3f}", flush=True)
    return accuracy, warned


def report(args, compression, accuracy, warned):
    """Rank 0 prints the final line (and the first warnings) and writes --json."""
    stats = compression.stats() if compression is not None else {}
    if hvd.rank() != 0:
        return
    n = hvd.size()
    method = ("dense" if args.dense else
              f"ScaleCom ratio={args.ratio} beta={args.beta} clip_factor="
              f"{compression.config.clip_factor}")
    print(f"final: {method} on {n} ranks, lr {args.lr * n:g}, test accuracy "
          f"{accuracy[-1]:.3f}; divergence warnings: {len(warned)}", flush=True)
    for text in warned[:3]:
        print("  " + text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(args), "ranks": n, "test_acc": accuracy,
                       "final_acc": accuracy[-1], "warnings": warned,
                       "divergence": stats.get("divergence")}, f)


def main():
    args = parse_args()
    hvd.init()
    torch.set_num_threads(1)
    data = tuple(map(torch.from_numpy, digits()))
    model = make_model("digits", "mlp", args.seed)
    compression, opt = make_optimizer(model, args)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    per_epoch = len(data[0]) // (BATCH * hvd.size())
    schedule = make_schedule(opt, args, per_epoch)
    accuracy, warned = train(model, opt, schedule, data, args, per_epoch)
    report(args, compression, accuracy, warned)


if __name__ == "__main__":
    main()
