"""Soak run: many steps of a small model, watching resident memory and buffers.

    mpirun -np 2 python -m horovod_scalecom.benchmarks.soak --method scalecom --steps 20000 \\
        --json soak_scalecom.json

Trains the examples' MLP on the synthetic task with ScaleCom through
Horovod's allreduce (``--method scalecom``: hvd.DistributedOptimizer) or on
the ScaleCom ring (``--method "scalecom ring"``: this package's
DistributedOptimizer); the older ``--path a`` and ``--path b`` still select
them. Every --every steps each rank samples its resident set size
(/proc/self/statm), the number of live torch tensors (a gc scan), ScaleCom's
memory buffers and their bytes, and the step time; rank 0 prints the samples
and writes them, with every rank's RSS, as JSON. After warm-up (the first
sample) these should stay flat: a leak shows as a steady climb.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import numpy as np
import torch

import horovod.torch as hvd
from horovod_scalecom.benchmarks.methods import RING, SCALECOM, method_name
from horovod_scalecom.benchmarks.synthetic import make_data
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_tensors() -> int:
    kinds = (torch.Tensor, torch.nn.Parameter)
    return sum(1 for obj in gc.get_objects() if type(obj) in kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", type=method_name, choices=(SCALECOM, RING),
                        default=SCALECOM)
    parser.add_argument("--path", choices=["a", "b"],
                        help=f'older spelling of --method: a = "{SCALECOM}", b = "{RING}"')
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.path:
        args.method = method_name(f"path {args.path}")
    torch.set_num_threads(1)
    hvd.init()
    torch.manual_seed(0)
    x, y = map(torch.from_numpy, make_data(seed=100 + hvd.rank(), n=8192))
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    compression = ScaleCom(model, ratio=args.ratio, beta=0.1, warmup_steps=10)
    wrap = hvd.DistributedOptimizer if args.method == SCALECOM else DistributedOptimizer
    opt = wrap(torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
               named_parameters=model.named_parameters(), compression=compression)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    samples = []
    last = time.perf_counter()
    for step in range(1, args.steps + 1):
        i = (step * 32) % (len(x) - 32)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        opt.step()
        if step % args.every == 0:
            now = time.perf_counter()
            buffers = [s.memory for s in compression.state.tensors.values() if s.memory is not None]
            sample = {"step": step, "loss": loss.item(), "rss_mb": rss_mb(),
                      "live_tensors": live_tensors(), "memory_buffers": len(buffers),
                      "memory_bytes": sum(b.numel() * b.element_size() for b in buffers),
                      "ms_per_step": 1e3 * (now - last) / args.every}
            sample["rss_mb_per_rank"] = hvd.allgather_object(sample["rss_mb"])
            samples.append(sample)
            last = time.perf_counter()
            if hvd.rank() == 0:
                print(f"{args.method} step {step:6d}  loss {sample['loss']:.3f}  "
                      f"RSS {sample['rss_mb']:.1f} MB  tensors {sample['live_tensors']}  "
                      f"buffers {sample['memory_buffers']} ({sample['memory_bytes']} B)  "
                      f"{sample['ms_per_step']:.2f} ms/step", flush=True)
    if hvd.rank() == 0:
        first, final = samples[0], samples[-1]
        growth = {k: final[k] - first[k] for k in ("rss_mb", "live_tensors", "memory_buffers",
                                                   "memory_bytes")}
        print(f"{args.method}: from step {first['step']} to {final['step']}: "
              + ", ".join(f"{k} {v:+g}" for k, v in growth.items()), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"method": args.method, "ranks": hvd.size(), "steps": args.steps,
                           "ratio": args.ratio, "samples": samples, "growth": growth}, f,
                          indent=1)
    hvd.join()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
