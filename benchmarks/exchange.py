"""Time one training step's gradient exchange, every method in the same run.

    mpirun -np 4 python -m benchmarks.exchange --model resnet50 \\
        --rounds 5 --json exchange.json

Methods: plain DDP and DDP with torch's fp16 compression hook (over gloo),
PowerSGD (torch DDP hook over gloo, rank 4), ScaleCom's DDP hook
(over gloo, at --hook-ratio), Horovod dense allreduce, Horovod fp16, local
top-k + allgather with error feedback (GRACE/DGC), "scalecom" (ScaleCom
through Horovod's allreduce: hvd.DistributedOptimizer + ScaleCom) and
"scalecom ring" (the ScaleCom ring, this package's DistributedOptimizer).
The DDP methods are set up first: after Horovod's fp16 allreduce PowerSGD's
gloo group was seen to hang inside the network namespaces.
Each exchanges fixed random gradients of the model's shapes (no downloads)
after --warmup steps per method. The methods take turns: --rounds rounds,
each timing --steps steps of every method (and of backward alone) one after
the other, so that drift in the machine's load reaches every method alike;
each figure is the median over rounds of the round's median, and ratios to
Horovod dense are taken within a round, then their median.

Per rank and method it reports: step time (backward + exchange), backward
alone, compression time where the method exposes it (selection, reduction
and memory update; top-k: torch.topk and index ops), communication time =
step - backward - compression, bytes sent per rank and the compression
against dense, and a bound: backward + this rank's compression + the wire
time of its bytes at --line-rate (Gbit/s; 0: no wire time, loopback). The
ring's ``breakdown`` (the engine's phases, Python, waits, the part hidden
behind backward) and the Horovod path's (selection, index share, update)
go to the JSON. Bytes: the engine's own count for the ring, the byte model
of docs/algorithm.md for the others (ring collectives). Rank 0 prints a table;
--json writes every rank's figures. Under benchmarks.network the same
command runs on a bandwidth-limited network.
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
from horovod_scalecom.ring_buckets import DEFAULT_BUCKET_CAP_MB
from horovod_scalecom.plan.shapes import bert_base, resnet50, transformer_small
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

from benchmarks.baselines import Params, TopkAllgather
from benchmarks.ddp_hooks import PowerSGD, ScaleComHook, TorchDDP
from benchmarks.methods import RING, SCALECOM, add_methods_option

METHODS = ("ddp dense", "ddp fp16", "powersgd", "ddp hook", "dense", "fp16", "topk",
           SCALECOM, RING)
# The planner's shape lists, and a small MLP-like list for quick runs and the tests.
MODELS = {"resnet50": resnet50, "bert-base": bert_base, "transformer-small": transformer_small,
          "mlp": lambda: [(1024, 1024)] * 4 + [(1024,)] * 4}


def master() -> str:
    """Where the DDP methods' gloo group meets (rank 0's address under benchmarks.network)."""
    return os.environ.get("SCALECOM_BENCH_MASTER", "127.0.0.1:29517")


def barrier(tag: str) -> None:
    hvd.allreduce(torch.zeros(1), name=f"barrier.{tag}")


class Method:
    """One method's model, optimizer and per-step figures: ``step()`` runs
    one backward and exchange, ``sent()`` is this rank's bytes of a step."""

    def __init__(self, method: str, shapes, grads, args) -> None:
        self.name = method
        self.shapes, self.grads, self.args = shapes, grads, args
        self.numel = [int(np.prod(s)) for s in shapes]
        self.dense_bytes = sum(bytes_model.dense_ring_allreduce(x, hvd.size())
                               for x in self.numel)
        self.times: list[list[float]] = []      # per round, per step
        self.compress: list[float] = []         # per step, where the method exposes it
        self.breakdowns: list[dict] = []        # per step: ScaleCom's exchanges, the DDP hook
        build = {"backward": self._backward, "dense": self._horovod, "fp16": self._horovod,
                 SCALECOM: self._scalecom, RING: self._scalecom, "topk": self._topk,
                 "powersgd": self._powersgd, "ddp hook": self._ddp_hook,
                 "ddp dense": self._torch_ddp, "ddp fp16": self._torch_ddp}.get(method)
        if build is None:
            raise ValueError(f"unknown method {method!r}")
        self.step, self.sent = build()
        self.timed(args.warmup, "warmup")
        self.compress.clear()
        self.breakdowns.clear()

    def _backward(self):
        model = Params(self.shapes)

        def step():
            model(self.grads).backward()
            model.zero_grad()
        return step, lambda: None

    def _horovod(self):
        model = Params(self.shapes)
        extra = {"compression": hvd.Compression.fp16} if self.name == "fp16" else {}
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                       named_parameters=model.named_parameters(), **extra)

        def step():
            model(self.grads).backward()
            opt.synchronize()
            model.zero_grad()
        return step, lambda: self.dense_bytes / (2 if self.name == "fp16" else 1)

    def _scalecom(self):
        """ScaleCom through Horovod's allreduce (hvd.DistributedOptimizer +
        ScaleCom) or the ScaleCom ring (this package's DistributedOptimizer)."""
        model = Params(self.shapes)
        base = torch.optim.SGD(model.parameters(), lr=0.0)
        compression = ScaleCom(model, ratio=self.args.ratio, beta=0.1)
        named = model.named_parameters()
        if self.name == SCALECOM:
            opt = hvd.DistributedOptimizer(base, named_parameters=named, compression=compression)
        else:
            opt = DistributedOptimizer(base, named_parameters=named, compression=compression,
                                       bucket_cap_mb=self.args.bucket_cap_mb)

        def step():
            model(self.grads).backward()
            opt.synchronize()
            if self.name == SCALECOM:
                stats = compression.stats()
                self.compress.append(stats["select_s"] + stats["update_s"])
                self.breakdowns.append({k: stats[k] for k in ("select_s", "share_s",
                                                              "update_s", "decompress_s")})
            else:
                stats = opt.stats()
                self.compress.append(stats["compress_s"])
                self.breakdowns.append(stats["breakdown"])
            model.zero_grad()

        def sent():
            if self.name == SCALECOM:
                return compression.stats()["bytes_sent"]
            small = [x for x in self.numel if x < compression.config.min_numel]
            return opt.stats()["ring_bytes"] + sum(
                bytes_model.dense_ring_allreduce(x, hvd.size()) for x in small)
        return step, sent

    def _topk(self):
        model = Params(self.shapes)
        topk = TopkAllgather(self.shapes, self.args.ratio)

        def step():
            model(self.grads).backward()
            topk.exchange([p.grad for p in model.parameters()])
            self.compress.append(topk.compress_s)
            model.zero_grad()
        return step, lambda: topk.bytes_per_rank(hvd.size())

    def _powersgd(self):
        if self.args.warmup < 2:
            raise ValueError("PowerSGD's first 2 steps are plain allreduce: use --warmup >= 2")
        psgd = PowerSGD(self.shapes, hvd.rank(), hvd.size(), master(), warmup=2)
        return lambda: psgd.step(self.grads), lambda: psgd.bytes_per_rank(hvd.size())

    def _torch_ddp(self):
        ddp = TorchDDP(self.shapes, hvd.rank(), hvd.size(), master(),
                       hook="fp16" if self.name == "ddp fp16" else None)
        return lambda: ddp.step(self.grads), lambda: ddp.bytes_per_rank(hvd.size())

    def _ddp_hook(self):
        hook = ScaleComHook(self.shapes, hvd.rank(), hvd.size(), master(),
                            self.args.hook_ratio or self.args.ratio)

        def step():
            hook.step(self.grads)
            self.breakdowns.append(hook.breakdown())
            self.compress.append(self.breakdowns[-1]["select_s"]
                                 + self.breakdowns[-1]["update_s"])
        return step, hook.bytes_per_rank

    def timed(self, steps: int, tag: str) -> list[float]:
        times = []
        for i in range(steps):
            barrier(f"{self.name}.{tag}.{i}")
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return times

    def round(self, steps: int, index: int) -> None:
        self.times.append(self.timed(steps, f"round{index}"))


def median_of_rounds(per_round: list[list[float]]) -> float:
    return statistics.median(statistics.median(r) for r in per_round)


def summary(m: Method, backward: Method, dense: Method | None, line_rate_gbit: float) -> dict:
    """This rank's figures of one method (see the module's docstring)."""
    step_s = median_of_rounds(m.times)
    backward_s = median_of_rounds(backward.times)
    compress_s = statistics.median(m.compress) if m.compress else None
    sent = m.sent() if m.name != "backward" else None
    wire_s = 8 * sent / (line_rate_gbit * 1e9) if sent and line_rate_gbit > 0 else 0.0
    bound_s = backward_s + (compress_s or 0.0) + wire_s
    row = {"method": m.name, "step_s": step_s, "backward_s": backward_s,
           "compress_s": compress_s, "comm_s": step_s - backward_s - (compress_s or 0.0),
           "wire_s": wire_s, "bound_s": bound_s, "step_over_bound": step_s / bound_s,
           "bytes_per_rank": sent, "dense_bytes": m.dense_bytes,
           "compression": m.dense_bytes / sent if sent else None,
           "rounds_s": [statistics.median(r) for r in m.times]}
    if dense is not None and dense is not m:
        row["step_over_dense"] = statistics.median(
            statistics.median(a) / statistics.median(b) for a, b in zip(m.times, dense.times))
    if m.breakdowns:
        row["breakdown"] = {k: statistics.median(b[k] for b in m.breakdowns)
                            for k in m.breakdowns[0]}
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="transformer-small")
    add_methods_option(parser, METHODS)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--hook-ratio", type=float,
                        help="the DDP hook's ratio (default: --ratio)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--line-rate", type=float, default=0.0,
                        help="Gbit/s of each rank's link, for the bound's wire time (0: none)")
    parser.add_argument("--bucket-cap-mb", type=float, default=DEFAULT_BUCKET_CAP_MB,
                        help="the ring's group size")
    parser.add_argument("--json")
    parser.add_argument("--label", default="", help="a tag stored with the figures (network)")
    return parser.parse_args()


def say(*args) -> None:
    """Print on rank 0 only."""
    if hvd.rank() == 0:
        print(*args, flush=True)


def fixed_gradients(shapes) -> list[torch.Tensor]:
    """This rank's gradient of every shape: fixed random values, seeded by rank and tensor."""
    return [torch.from_numpy(np.random.default_rng([hvd.rank(), i]).standard_normal(s)
                             .astype(np.float32)) for i, s in enumerate(shapes)]


def timed_methods(args: argparse.Namespace, shapes, grads) -> list[Method]:
    """Backward alone, then every method, set up and timed over the rounds."""
    methods = [Method("backward", shapes, grads, args)]
    for name in args.methods:
        say(f"  setting up {name} ...")
        methods.append(Method(name, shapes, grads, args))
    for r in range(args.rounds):
        say(f"  round {r + 1}/{args.rounds}")
        for m in methods:
            m.round(args.steps, r)
    return methods


def table_line(row: dict) -> str:
    c, vs = row["compress_s"], row.get("step_over_dense")
    return (f"  {row['method']:>13}: step {1e3 * row['step_s']:8.1f} ms  backward "
            f"{1e3 * row['backward_s']:6.1f}  comm {1e3 * row['comm_s']:7.1f}  compress "
            f"{'   -  ' if c is None else f'{1e3 * c:6.1f}'}  bound {1e3 * row['bound_s']:7.1f}"
            f"  step/bound {row['step_over_bound']:4.2f}  "
            f"{'' if vs is None else f'step/dense {vs:4.2f}  '}"
            f"{row['bytes_per_rank'] / 1e6:8.3f} MB/rank {row['compression']:6.1f}x")


def gathered_rows(methods: list[Method], line_rate_gbit: float) -> list[dict]:
    """Each method's figures (rank 0's, with every rank's under "per_rank"), printed by rank 0."""
    dense = next((m for m in methods if m.name == "dense"), None)
    rows = []
    for m in methods[1:]:
        row = summary(m, methods[0], dense, line_rate_gbit)
        rows.append({**row, "per_rank": hvd.allgather_object(row)})
        say(table_line(row))
    return rows


def write_json(path: str, args: argparse.Namespace, numel: int, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"model": args.model, "ratio": args.ratio,
                   "hook_ratio": args.hook_ratio or args.ratio, "ranks": hvd.size(),
                   "bucket_cap_mb": args.bucket_cap_mb,
                   "label": args.label, "line_rate_gbit": args.line_rate,
                   "rounds": args.rounds, "steps": args.steps,
                   "numel": numel, "rows": rows}, f, indent=1)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    hvd.init()
    shapes = MODELS[args.model]()
    grads = fixed_gradients(shapes)
    numel = int(sum(g.numel() for g in grads))
    say(f"# {args.model}: {len(shapes)} tensors, {numel:,} parameters, "
        f"n={hvd.size()}, ratio {args.ratio}, {args.rounds} rounds x {args.steps} steps "
        f"{args.label}")
    rows = gathered_rows(timed_methods(args, shapes, grads), args.line_rate)
    if hvd.rank() == 0 and args.json:
        write_json(args.json, args, numel, rows)


if __name__ == "__main__":
    main()
