"""Time one training step's gradient exchange, every method in the same run.

    mpirun -np 4 python -m horovod_scalecom.benchmarks.exchange --model resnet50 \\
        --json exchange.json

Methods: PowerSGD (torch DDP hook over gloo, rank 4), Horovod dense
allreduce, Horovod fp16, local top-k + allgather with error feedback
(GRACE/DGC), ScaleCom path A (hvd.DistributedOptimizer + ScaleCom) and path B
(the ring). PowerSGD runs first: after Horovod's fp16 allreduce its gloo
group was seen to hang inside the network namespaces.
Each exchanges fixed random gradients of the model's shapes (no downloads)
for --steps steps after --warmup steps, with a barrier before each step.

Per rank and method it reports: step time (backward + exchange, median),
compression time where the method exposes it (selection and memory update;
top-k: torch.topk and index ops), communication time = step - backward -
compression (backward is timed alone, with no exchange), bytes sent per rank
and the compression against dense. Bytes: the engine's own count for path B,
the byte model of DESIGN.md for the others (ring collectives). Rank 0 prints
progress and a table; --json writes every rank's figures. Under
benchmarks.network the same command runs on a bandwidth-limited network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

import horovod.torch as hvd
from horovod_scalecom import bytes_model
from horovod_scalecom.benchmarks.baselines import Params, PowerSGD, TopkAllgather
from horovod_scalecom.benchmarks.shapes import MODELS
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

METHODS = ("powersgd", "dense", "fp16", "topk", "path A", "path B")


def barrier(tag: str) -> None:
    hvd.allreduce(torch.zeros(1), name=f"barrier.{tag}")


def timed_steps(step, args, tag: str) -> list[float]:
    times = []
    for i in range(args.warmup + args.steps):
        barrier(f"{tag}.{i}")
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times[args.warmup:]


def run(method: str, shapes, grads, args) -> dict:
    size = hvd.size()
    numel = [int(np.prod(s)) for s in shapes]
    dense_bytes = sum(bytes_model.dense_ring_allreduce(x, size) for x in numel)
    model = Params(shapes)
    base = torch.optim.SGD(model.parameters(), lr=0.0)
    compress = []          # seconds per measured step, where the method exposes it
    sent = None

    if method == "backward":
        def step():
            model(grads).backward()
            model.zero_grad()
    elif method in ("dense", "fp16", "path A", "path B"):
        compression = None
        if method == "fp16":
            opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters(),
                                           compression=hvd.Compression.fp16)
        elif method == "dense":
            opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters())
        else:
            compression = ScaleCom(model, ratio=args.ratio, beta=0.1)
            wrap = hvd.DistributedOptimizer if method == "path A" else DistributedOptimizer
            opt = wrap(base, named_parameters=model.named_parameters(), compression=compression)

        def step():
            model(grads).backward()
            opt.synchronize()
            if method == "path A":
                stats = compression.stats()
                compress.append(stats["select_s"] + stats["update_s"])
            elif method == "path B":
                compress.append(opt.stats()["compress_s"])
            model.zero_grad()
        if method == "path B":
            def sent_now():
                stats = opt.stats()
                small = [x for x in numel if x < compression.config.min_numel]
                return stats["ring_bytes"] + sum(bytes_model.dense_ring_allreduce(x, size)
                                                 for x in small)
        elif method == "path A":
            sent_now = lambda: compression.stats()["bytes_sent"]  # noqa: E731
        else:
            sent_now = lambda: dense_bytes / (2 if method == "fp16" else 1)  # noqa: E731
    elif method == "topk":
        topk = TopkAllgather(shapes, args.ratio)

        def step():
            model(grads).backward()
            topk.exchange([p.grad for p in model.parameters()])
            compress.append(topk.compress_s)
            model.zero_grad()
        sent_now = lambda: topk.bytes_per_rank(size)  # noqa: E731
    elif method == "powersgd":
        if args.warmup < 2:
            raise ValueError("PowerSGD's first 2 steps are plain allreduce: use --warmup >= 2")
        master = os.environ.get("SCALECOM_BENCH_MASTER", "127.0.0.1:29517")
        psgd = PowerSGD(shapes, hvd.rank(), size, master, warmup=2)
        step = lambda: psgd.step(grads)  # noqa: E731
        sent_now = lambda: psgd.bytes_per_rank(size)  # noqa: E731
    else:
        raise ValueError(f"unknown method {method!r}")

    times = timed_steps(step, args, method)
    if method != "backward":
        sent = sent_now()
    compress = compress[-args.steps:]
    return {"method": method, "step_s": statistics.median(times),
            "compress_s": statistics.median(compress) if compress else None,
            "bytes_per_rank": sent, "dense_bytes": dense_bytes,
            "compression": dense_bytes / sent if sent else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="transformer-small")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--label", default="", help="a tag stored with the figures (network)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hvd.init()
    shapes = MODELS[args.model]()
    grads = [torch.from_numpy(np.random.default_rng([hvd.rank(), i]).standard_normal(s)
                              .astype(np.float32)) for i, s in enumerate(shapes)]
    say = (lambda *a: print(*a, flush=True)) if hvd.rank() == 0 else (lambda *a: None)
    say(f"# {args.model}: {len(shapes)} tensors, {sum(g.numel() for g in grads):,} parameters, "
        f"n={hvd.size()}, ratio {args.ratio} {args.label}")
    rows = []
    for method in args.methods:
        say(f"  {method} ...")
        # Backward alone, right before each method, so drift in the machine's
        # load moves both figures of the subtraction together.
        backward = run("backward", shapes, grads, args)["step_s"]
        row = run(method, shapes, grads, args)
        per_rank = hvd.allgather_object(row)
        comm = [r["step_s"] - backward - (r["compress_s"] or 0.0) for r in per_rank]
        rows.append({**row, "backward_s": backward, "comm_s": comm[0],
                     "per_rank": [dict(r, comm_s=c) for r, c in zip(per_rank, comm)]})
        c = row["compress_s"]
        say(f"  {method:>8}: step {1e3 * row['step_s']:9.1f} ms  comm {1e3 * comm[0]:9.1f} ms  "
            f"compress {'    -   ' if c is None else f'{1e3 * c:7.1f} ms'}  "
            f"{row['bytes_per_rank'] / 1e6:9.3f} MB/rank  {row['compression']:6.1f}x")
    if hvd.rank() == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "ratio": args.ratio, "ranks": hvd.size(),
                       "label": args.label, "numel": int(sum(g.numel() for g in grads)),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
