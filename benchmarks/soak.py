"""Soak run: many steps of a small model, watching resident memory and buffers.

    mpirun -np 2 python -m benchmarks.soak --method scalecom --steps 20000 \\
        --json soak_scalecom.json

Trains the examples' MLP on the synthetic task with ScaleCom through
Horovod's allreduce (``--method scalecom``: hvd.DistributedOptimizer) or on
the ScaleCom ring (``--method "scalecom ring"``: this package's
DistributedOptimizer). Every --every steps each rank samples its resident set size
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
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

from benchmarks.methods import RING, SCALECOM
from benchmarks.synthetic import make_data


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_tensors() -> int:
    kinds = (torch.Tensor, torch.nn.Parameter)
    return sum(1 for obj in gc.get_objects() if type(obj) in kinds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=(SCALECOM, RING), default=SCALECOM)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--json")
    return parser.parse_args()


def build(method: str, ratio: float) -> tuple[torch.nn.Module, ScaleCom, torch.optim.Optimizer]:
    """The examples' MLP, its ScaleCom compressor and the method's distributed optimizer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    compression = ScaleCom(model, ratio=ratio, beta=0.1, warmup_steps=10)
    wrap = hvd.DistributedOptimizer if method == SCALECOM else DistributedOptimizer
    opt = wrap(torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
               named_parameters=model.named_parameters(), compression=compression)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    return model, compression, opt


def sample(step: int, loss: float, compression: ScaleCom, ms_per_step: float) -> dict:
    """This rank's memory figures now, with every rank's RSS."""
    buffers = [s.memory for s in compression.state.tensors.values() if s.memory is not None]
    row = {"step": step, "loss": loss, "rss_mb": rss_mb(),
           "live_tensors": live_tensors(), "memory_buffers": len(buffers),
           "memory_bytes": sum(b.numel() * b.element_size() for b in buffers),
           "ms_per_step": ms_per_step}
    row["rss_mb_per_rank"] = hvd.allgather_object(row["rss_mb"])
    return row


def soak(args: argparse.Namespace) -> list[dict]:
    """Trains for --steps steps, a sample every --every steps (printed by rank 0)."""
    x, y = map(torch.from_numpy, make_data(seed=100 + hvd.rank(), n=8192))
    model, compression, opt = build(args.method, args.ratio)
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
            samples.append(sample(step, loss.item(), compression,
                                  1e3 * (now - last) / args.every))
            last = time.perf_counter()     # the sample's own cost kept out of the next figure
            if hvd.rank() == 0:
                print(sample_line(args.method, samples[-1]), flush=True)
    return samples


def sample_line(method: str, row: dict) -> str:
    return (f"{method} step {row['step']:6d}  loss {row['loss']:.3f}  "
            f"RSS {row['rss_mb']:.1f} MB  tensors {row['live_tensors']}  "
            f"buffers {row['memory_buffers']} ({row['memory_bytes']} B)  "
            f"{row['ms_per_step']:.2f} ms/step")


def report(args: argparse.Namespace, samples: list[dict]) -> None:
    """Rank 0: the growth from the first sample to the last, printed and, with --json, saved."""
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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    hvd.init()
    samples = soak(args)
    if hvd.rank() == 0:
        report(args, samples)
    hvd.join()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
