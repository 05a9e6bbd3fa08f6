"""Train a small MLP data-parallel with Horovod and ScaleCom, on generated data.

    mpirun -np 2 python examples/pytorch_synthetic.py [--ratio 0.01] [--epochs 8] [--cuda]

Each rank draws its own shard of a synthetic 10-class problem (labels from a
fixed random teacher network), so nothing is downloaded. It prints progress,
the bytes ScaleCom sent against a dense allreduce, and a final accuracy line.
With --cuda each rank trains on GPU hvd.local_rank() and ScaleCom's memory
stays there (the CUDA path has not yet run on a GPU: docs/design.md).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import horovod.torch as hvd
from horovod_scalecom.torch import ScaleCom
from horovod_scalecom.config import DEFAULTS

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.synthetic import make_data  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="per rank: x hvd.size(), the Horovod recipe")
    parser.add_argument("--dense", action="store_true", help="plain Horovod, no compression")
    parser.add_argument("--cuda", action="store_true", help="one GPU per rank")
    parser.add_argument("--seed", type=int, default=0, help="the model's initial weights")
    return parser.parse_args()


def pick_device(args):
    if not args.cuda:
        return torch.device("cpu")
    torch.cuda.set_device(hvd.local_rank())
    return torch.device("cuda", hvd.local_rank())


def make_training(args, device):
    """The model, ScaleCom (None with --dense) and Horovod's DistributedOptimizer."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).to(device)
    compression = None if args.dense else ScaleCom(model, ratio=args.ratio, beta=args.beta)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.9),
        named_parameters=model.named_parameters(),
        compression=compression or hvd.Compression.none)
    return model, compression, opt


def train(model, compression, opt, data, args):
    """Returns the last test accuracy and the bytes sent, by ScaleCom and by a dense allreduce."""
    x, y, x_test, y_test = data
    sent = dense = 0.0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), args.batch):
            batch = perm[i:i + args.batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            # stats() holds only the last step's figures: summed here over the run.
            if compression is not None:
                stats = compression.stats()
                sent += stats["bytes_sent"]
                dense += stats["dense_bytes"]
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        if hvd.rank() == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}  "
                  f"test accuracy {acc:.3f}", flush=True)
    return acc, sent, dense


def report(args, compression, acc, sent, dense, start):
    if hvd.rank() != 0:
        return
    method = "dense" if compression is None else f"ScaleCom ratio={args.ratio} beta={args.beta}"
    if compression is not None:
        print(f"bytes sent per rank: {sent / 1e6:.2f} MB vs {dense / 1e6:.2f} MB dense "
              f"({dense / sent:.1f}x less, by the byte model of docs/algorithm.md)")
    print(f"final: {method} on {hvd.size()} ranks, test accuracy {acc:.3f}, "
          f"{time.perf_counter() - start:.1f} s")


def main():
    args = parse_args()
    hvd.init()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    device = pick_device(args)
    # Each rank its own shard of the training data; one test set for all.
    x, y = (torch.from_numpy(a).to(device) for a in make_data(seed=100 + hvd.rank(), n=4096))
    x_test, y_test = (torch.from_numpy(a).to(device) for a in make_data(seed=99, n=2048))
    model, compression, opt = make_training(args, device)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    start = time.perf_counter()
    acc, sent, dense = train(model, compression, opt, (x, y, x_test, y_test), args)
    report(args, compression, acc, sent, dense, start)


if __name__ == "__main__":
    main()
