"""Time one step's gradient exchange under mpirun: Horovod dense allreduce,
ScaleCom path A (hvd.DistributedOptimizer + ScaleCom) and path B (the ring).

    mpirun -np 4 python -m horovod_scalecom.benchmarks.exchange --model transformer-small

Each method exchanges the same gradients (fixed random tensors of the model's
shapes) for --steps steps after --warmup steps; the figure is the median of
rank 0's time for backward() + synchronize() (the backward is the same cheap
product for every method). Bytes per rank: the byte model for dense and
path A, the ring engine's own count for path B. Rank 0 prints a table and,
with --json, writes the rows. On one machine over loopback this measures the
software path (selection, copies, latency), not a network; see NETWORK-LAB
for bandwidth-limited runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import horovod.torch as hvd
from horovod_scalecom import bytes_model
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

MODELS = {
    # name: list of (shape, count); no downloads, shapes only.
    "transformer-small": [((512, 512), 8), ((2048, 512), 4), ((512, 2048), 4), ((512,), 20),
                          ((8000, 512), 1)],
    "mlp": [((1024, 1024), 4), ((1024,), 4)],
}


class Params(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        for i, shape in enumerate(shapes):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(shape)))


def run(method: str, shapes, args) -> dict:
    model = Params(shapes)
    grads = [torch.from_numpy(np.random.default_rng([hvd.rank(), i]).standard_normal(s)
                              .astype(np.float32)) for i, s in enumerate(shapes)]
    base = torch.optim.SGD(model.parameters(), lr=0.0)
    compression = None
    if method == "dense":
        opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters())
    elif method == "path A":
        compression = ScaleCom(model, ratio=args.ratio, beta=0.1)
        opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters(),
                                       compression=compression)
    else:
        compression = ScaleCom(model, ratio=args.ratio, beta=0.1)
        opt = DistributedOptimizer(base, named_parameters=model.named_parameters(),
                                   compression=compression)
    times = []
    for step in range(args.warmup + args.steps):
        hvd.allreduce(torch.zeros(1), name=f"barrier.{method}.{step}")
        start = time.perf_counter()
        sum((p * g).sum() for p, g in zip(model.parameters(), grads)).backward()
        opt.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad()
    size = hvd.size()
    numel = [int(np.prod(s)) for s in shapes]
    dense_bytes = sum(bytes_model.dense_ring_allreduce(x, size) for x in numel)
    if method == "dense":
        sent = dense_bytes
    elif method == "path A":
        sent = compression.stats()["bytes_sent"]
    else:
        stats = opt.stats()
        small = [x for x in numel if x < compression.config.min_numel]
        sent = stats["ring_bytes"] + sum(bytes_model.dense_ring_allreduce(x, size) for x in small)
    return {"method": method, "ranks": size, "step_ms": 1e3 * statistics.median(times[args.warmup:]),
            "bytes_per_rank": sent, "compression": dense_bytes / sent if sent else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description="gradient exchange: dense vs ScaleCom A and B")
    parser.add_argument("--model", choices=sorted(MODELS), default="transformer-small")
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hvd.init()
    shapes = [shape for shape, count in MODELS[args.model] for _ in range(count)]
    rows = []
    for method in ("dense", "path A", "path B"):
        rows.append(run(method, shapes, args))
        if hvd.rank() == 0:
            r = rows[-1]
            print(f"{args.model} n={r['ranks']} {r['method']:>7}: {r['step_ms']:8.1f} ms/step "
                  f"{r['bytes_per_rank'] / 1e6:9.3f} MB/rank  ({r['compression']:.1f}x less "
                  "than dense)", flush=True)
    if hvd.rank() == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "ratio": args.ratio,
                       "numel": int(sum(np.prod(s) for s in shapes)), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
