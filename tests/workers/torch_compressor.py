"""mpirun worker: hvd.DistributedOptimizer with horovod_scalecom.torch.ScaleCom.

usage: torch_compressor.py OUTDIR MODE [options]; see the modes below.
"""

import argparse
import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

import horovod.torch as hvd
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom, clip_before_exchange

from common import SHAPES, gradient, route_through_kernels_library, run

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Params(torch.nn.Module):
    """One parameter per entry of SHAPES, whose gradient the test dictates."""

    def __init__(self, shapes, dtype, noncontig=False):
        super().__init__()
        for name, shape in shapes.items():
            if noncontig and len(shape) == 2:
                # A transposed parameter: autograd gives it a gradient of the
                # same (non-contiguous) strides.
                data = torch.zeros(shape[::-1], dtype=dtype).t()
            else:
                data = torch.zeros(shape, dtype=dtype)
            self.register_parameter(name.replace(".", "_"), torch.nn.Parameter(data))

    def loss(self, grads):
        # d/dp sum(p * G) = G: backward hands Horovod exactly the gradients chosen.
        return sum((p * g).sum() for p, g in zip(self.parameters(), grads) if g is not None)


def sequence(args, out):
    """Feed gradient(seed, rank, step, i) for `steps` steps; save outputs and memory."""
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    model = Params(SHAPES, dtype, args.noncontig).to(device)
    names = [n for n, _ in model.named_parameters()]
    compression = ScaleCom(model, ratio=args.ratio, beta=args.beta,
                           warmup_steps=args.warmup, min_numel=args.min_numel,
                           clip_norm=args.clip_norm or None)
    if args.kernels_lib:
        route_through_kernels_library(compression, args.kernels_lib)
    if args.clip:
        clip_before_exchange(model, args.clip)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), named_parameters=model.named_parameters(),
        compression=compression, backward_passes_per_step=args.bpps, num_groups=args.groups)
    result = {}
    for step in range(args.steps):
        for micro in range(args.bpps):
            grads = [torch.from_numpy(gradient(args.seed, hvd.rank(), step * args.bpps + micro,
                                               i, shape, args.inject)).to(device, dtype)
                     for i, shape in enumerate(SHAPES.values())]
            if args.skip_param is not None and step % 2 == 1:
                grads[args.skip_param] = None        # this parameter gets no gradient
            model.loss(grads).backward()
            if args.noncontig:
                assert not model.fc1_weight.grad.is_contiguous()
        opt.synchronize()
        for name, p in zip(names, model.parameters()):
            result[f"out/{step}/{name}"] = p.grad.float().cpu().numpy().copy()
        stats = compression.stats()
        result[f"nonfinite/{step}"] = np.array(stats["nonfinite_kept"])
        result["stats_keys"] = np.array(json.dumps(
            [sorted(stats), sorted(next(iter(stats["tensors"].values())))]))
        # Horovod's zero_grad() takes no arguments; the module's does. Horovod
        # set_()s .grad to the (contiguous) decompressed tensor, so only a fresh
        # .grad keeps the transposed parameter's layout in the next step.
        model.zero_grad(set_to_none=args.set_to_none or args.noncontig)
    for name, entry in compression.state_dict()["tensors"].items():
        if entry["memory"] is not None:
            assert entry["memory"].device == device, (name, entry["memory"].device)
            result[f"mem/{name}"] = entry["memory"].cpu().numpy()
        result[f"step/{name}"] = np.array(entry["step"])
    stats = compression.stats()
    result["divergence"] = np.array(json.dumps(stats["divergence"]))
    result["stats/bytes_sent"] = np.array(stats["bytes_sent"])
    result["stats/dense_bytes"] = np.array(stats["dense_bytes"])
    result["stats/index_share"] = np.array(stats["index_share"])
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def optimizer(args, model, compression, lr=0.1):
    """The Horovod path: Horovod's DistributedOptimizer; the ring: ours."""
    wrap = hvd.DistributedOptimizer if args.path == "horovod" else DistributedOptimizer
    return wrap(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                named_parameters=model.named_parameters(), compression=compression)


def build(args):
    torch.manual_seed(args.seed)
    model = MLP()
    compression = ScaleCom(model, ratio=args.ratio, beta=args.beta, min_numel=args.min_numel,
                           warmup_steps=args.warmup)
    return model, optimizer(args, model, compression), compression


def train_steps(model, opt, first, last, seed, kill_at=-1):
    for step in range(first, last):
        if step == kill_at and hvd.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)    # a rank dies mid-run, no goodbye
        rng = np.random.default_rng([seed, hvd.rank(), step])
        x = torch.from_numpy(rng.standard_normal((16, 32)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, 16))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def train(args, out):
    """A small MLP with SGD + momentum. --stop-at N: save a checkpoint after N
    steps and end the job; --start-at N --ckpt DIR: a new job that loads it
    and trains on from step N."""
    model, opt, compression = build(args)
    if args.start_at:
        ckpt = torch.load(Path(args.ckpt) / f"ckpt_rank{hvd.rank()}.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        compression.load_state_dict(ckpt["scalecom"])
    train_steps(model, opt, args.start_at, args.stop_at or args.steps, args.seed, args.kill_at)
    if args.stop_at:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "scalecom": compression.state_dict()}, out / f"ckpt_rank{hvd.rank()}.pt")
        return
    np.savez(out / f"rank{hvd.rank()}.npz",
             **{name: p.detach().numpy() for name, p in model.named_parameters()})


def bad(args, out):
    """Each case must raise the same clear error on every rank."""
    model = MLP()
    if args.case == "ratio":
        ScaleCom(model, ratio=args.ratio)
    elif args.case == "beta":
        ScaleCom(model, beta=args.beta)
    elif args.case == "unknown":
        hvd.allreduce(torch.randn(4000), compression=ScaleCom(model, min_numel=0))
    elif args.case in ("numel", "extra_param", "ratio_differs"):
        if args.case == "numel":     # the same parameter name with a rank-dependent numel
            model.fc1 = torch.nn.Linear(32, 64 + hvd.rank())
            model.fc2 = torch.nn.Linear(64 + hvd.rank(), 10)
        if args.case == "extra_param" and hvd.rank() == 1:
            model.extra = torch.nn.Parameter(torch.zeros(10))
        ratio = 0.01 * (1 + hvd.rank()) if args.case == "ratio_differs" else 0.01
        opt = optimizer(args, model, ScaleCom(model, ratio=ratio, min_numel=0))
        (model(torch.randn(4, 32)).sum() + sum(p.sum() for p in model.parameters())).backward()
        opt.step()
    elif args.case == "shape_change":
        # Autograd refuses a gradient of a new shape, so the gradients are handed
        # over directly: to the ring's synchronize (the ring), or to compress in one
        # fixed order (the Horovod path; Horovod's synchronize would visit them in set order).
        compression = ScaleCom(model, min_numel=0)
        opt = optimizer(args, model, compression)
        for width in (32, 16):
            if width != 32:
                model.fc1.weight.data = torch.zeros(64, width)   # model surgery between steps
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            if args.path == "ring":
                opt.synchronize()
            else:
                for p in model.parameters():
                    compression.compress(p.grad)
    elif args.case == "sparse":      # the ring; the Horovod path hands them to Horovod (see edge)
        emb = torch.nn.Embedding(100, 16, sparse=True)
        opt = optimizer(args, emb, ScaleCom(emb, min_numel=0))
        emb(torch.tensor([1, 2, 3])).sum().backward()
        opt.step()
    elif args.case == "generator":
        ScaleCom(model.named_parameters())
    raise AssertionError(f"case {args.case} raised nothing")


def edge(args, out):
    """Inputs with a documented behaviour: an empty parameter, a float64 one
    (both sent dense), and in the Horovod path a sparse embedding (Horovod's sparse
    allreduce, uncompressed)."""
    torch.manual_seed(0)
    model = MLP()
    model.empty = torch.nn.Parameter(torch.zeros(0))
    model.wide = torch.nn.Parameter(torch.zeros(3000, dtype=torch.float64))
    if args.path == "horovod":
        model.emb = torch.nn.Embedding(50, 8, sparse=True)
    opt = optimizer(args, model, ScaleCom(model, ratio=0.01, min_numel=0))
    result = {}
    for step in range(3):
        g = torch.from_numpy(gradient(args.seed, hvd.rank(), step, 9, (3000,))).double()
        loss = model(torch.randn(4, 32)).sum() + (model.wide * g).sum() + model.empty.sum()
        if args.path == "horovod":
            loss = loss + model.emb(torch.tensor([step, 7 + hvd.rank()])).sum()
        opt.zero_grad()
        loss.backward()
        opt.synchronize()
        for name, p in model.named_parameters():
            grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
            result[f"out/{step}/{name}"] = grad.numpy().copy()
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("mode", choices=["sequence", "train", "bad", "edge"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--min-numel", type=int, default=100)
    parser.add_argument("--bpps", type=int, default=1)
    parser.add_argument("--groups", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--set-to-none", action="store_true")
    parser.add_argument("--skip-param", type=int, default=None)
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--start-at", type=int, default=0)
    parser.add_argument("--ckpt", default="")
    parser.add_argument("--case", default="")
    parser.add_argument("--path", choices=["horovod", "ring"], default="horovod")
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--noncontig", action="store_true")
    parser.add_argument("--inject", action="store_true", help="NaN/Inf in one gradient")
    parser.add_argument("--clip", type=float, default=0.0, help="clip_before_exchange max_norm")
    parser.add_argument("--clip-norm", type=float, default=0.0, help="ScaleCom(clip_norm=...)")
    parser.add_argument("--device", default="cpu", help="sequence mode: cpu or cuda")
    parser.add_argument("--kernels-lib", default="",
                        help="sequence mode: torch.ops.scalecom_host (csrc/torch/cuda_ops.cc) "
                             "over this build of the C ABI for every tensor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hvd.init()
    out = Path(args.outdir)
    {"sequence": sequence, "train": train, "bad": bad, "edge": edge}[args.mode](args, out)


if __name__ == "__main__":
    import sys
    run(main, sys.argv[1])
