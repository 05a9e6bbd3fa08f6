"""Convergence study: n simulated workers in one process, exact to the reference.

    python -m benchmarks.convergence --task mnist1d --models mlp cnn \\
        --ranks 4 16 --batch-per-rank 16 --steps 1500 --lr 0.05 --ratios 0.01 0.0025 \\
        --methods dense scalecom topk --betas 0.1 0.5 1 --seeds 0 1 2 --tag normal --json F

Data sets and models are benchmarks/tasks.py's (scikit-learn's digits,
MNIST-1D from the mnist1d package, the examples' synthetic task; an MLP and
a CNN). Every step draws one global batch, splits it into n equal
per-worker batches, takes each worker's gradient (torch.func.vmap) and
hands the n gradients of every tensor to a simulator:
``BatchedHorovodPath`` (the reference's HorovodPathSimulator to the bit,
all workers at once) for ScaleCom at any beta, ``TopkAllgatherSimulator``
for local top-k + allgather. The averaged gradient then goes to an
ordinary torch SGD with momentum, as after hvd.DistributedOptimizer. The
real compressor is bitwise equal to the reference for n = 2 and equal up to
MPI's summation order above (tests/test_torch_compressor.py), so the n
workers here train as n real ranks would.

Per run it records the test accuracy and loss after every epoch, the train
loss every 16 steps, the bytes per worker by the byte model, and per
compressed tensor the diagnostics of benchmarks/diagnostics.py (overlaps,
captured energy, memory, lag). The remedies of docs/convergence.md's
screening (DGC's ratio warm-up, momentum correction and factor masking, a
beta warm-up, a per-worker beta or bound from the memory's norm, per-layer
k: ``--k-policy floor`` or ``equal-bytes``, benchmarks/batched.py's
``layer_k``) are RunSpec fields, all off by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap

from horovod_scalecom import bytes_model
from horovod_scalecom.config import DEFAULT_CLIP_FACTOR, DEFAULTS, ScaleComConfig
from horovod_scalecom.reference import TopkAllgatherSimulator
from horovod_scalecom.reference.horovod_path import allreduce_mean

from benchmarks.batched import K_POLICIES, BatchedHorovodPath, LayerKTopk, layer_k
from benchmarks.diagnostics import Tracker, step_figures
from benchmarks.tasks import MODELS, TASKS, load_task, make_model

METHODS = ("dense", "scalecom", "ef", "topk")
# The two learning-rate settings of docs/convergence.md; everything else is shared.
REGIMES = {"normal": {"lr": 0.1, "momentum": 0.9}, "hard": {"lr": 0.8, "momentum": 0.9}}


@dataclass
class RunSpec:
    method: str
    ranks: int
    ratio: float
    seed: int
    lr: float
    momentum: float
    epochs: int
    warmup_steps: int = 0        # ScaleCom's dense warm-up
    lr_warmup_steps: int = 0     # linear learning-rate ramp before the cosine decay
    clip: float = 0.0            # absolute per-worker, per-tensor clipping (clip_before_exchange)
    global_batch: int = 256
    steps: int = 0               # the run's length in steps; 0: ``epochs`` whole epochs
    train_size: int = 16384
    task: str = "synthetic"      # or "digits", "mnist1d" (benchmarks/tasks.py)
    model: str = "mlp"           # or "cnn"
    beta: float | None = None    # None: the method's (ScaleCom's default, classic EF 1)
    clip_factor: float | None = DEFAULT_CLIP_FACTOR   # ScaleCom's relative clip; None: off
    # Remedies under study (docs/convergence.md), all off by default:
    ratio_warmup_steps: int = 0  # DGC's exponential ratio warm-up: 1/4, 1/16, ... down to ratio
    momentum_correction: bool = False  # DGC: each worker compresses its own velocity
    factor_masking: bool = False       # DGC: a worker's velocity is zeroed where it was sent
    memory_factor: float = 0.0   # bound each memory's norm to this x the clip's level; 0: off
    memory_beta: float = 0.0     # each worker's beta falls where its memory holds more levels
    beta_warmup_steps: int = 0   # beta rises linearly from 0.1 to ``beta`` over these steps
    k_policy: str = "ratio"      # per-layer k (batched.layer_k): "ratio", "floor", "equal-bytes"
    k_floor: int = 32            # the floor policy's least k per compressed tensor

    def __post_init__(self) -> None:
        if self.factor_masking and not self.momentum_correction:
            raise ValueError("factor masking zeroes the velocity of momentum correction: "
                             "it needs momentum_correction")
        if self.method in ("dense", "topk") and (
                self.ratio_warmup_steps or self.momentum_correction or self.memory_factor
                or self.memory_beta or self.beta_warmup_steps):
            raise ValueError(f"the remedies are ScaleCom's; {self.method} takes none")
        if self.method == "dense" and self.k_policy != "ratio":
            raise ValueError("dense sends every value: it takes no k policy")
        if self.k_policy not in K_POLICIES:
            raise ValueError(f"unknown k policy {self.k_policy!r}; "
                             f"choose one of {', '.join(K_POLICIES)}")
        if self.k_policy != "ratio" and self.ratio_warmup_steps:
            raise ValueError("a per-layer k is fixed for the run: it cannot follow the ratio "
                             "warm-up; use one or the other")
        if self.beta is None:
            self.beta = {"scalecom": DEFAULTS.beta, "ef": 1.0}.get(self.method, float("nan"))


def warmup_ratio(spec: RunSpec, step: int) -> float:
    """DGC's exponential ratio warm-up: 1/4, 1/16, 1/64, ... in four equal
    stages over the first ``ratio_warmup_steps``, never below the target."""
    if step >= spec.ratio_warmup_steps:
        return spec.ratio
    stage = 4 * step // spec.ratio_warmup_steps
    return max(spec.ratio, 0.25 ** (stage + 1))


def make_simulator(spec: RunSpec, numels: dict[str, int]):
    """The run's exchange for tensors of these sizes; None for dense."""
    if spec.method == "dense":
        return None
    config = ScaleComConfig(ratio=spec.ratio, beta=spec.beta if spec.method != "topk" else 1.0,
                            warmup_steps=spec.warmup_steps,
                            clip_factor=spec.clip_factor if spec.method != "topk" else None)
    k = None if spec.k_policy == "ratio" else layer_k(numels, config, spec.k_policy,
                                                            spec.k_floor)
    if spec.method == "topk":
        return TopkAllgatherSimulator(spec.ranks, config) if k is None else \
            LayerKTopk(spec.ranks, config, k)
    return BatchedHorovodPath(spec.ranks, config, memory_beta=spec.memory_beta, k=k)


def total_steps(spec: RunSpec, train_len: int) -> int:
    return spec.steps or spec.epochs * (train_len // spec.global_batch)


def bound_memories(sim: BatchedHorovodPath, name: str, factor: float) -> None:
    """Scale each worker's memory of ``name`` to norm ``factor`` x its clip level where above."""
    memory, levels = sim.tensors[name].memory, sim.levels.level[name]
    for r in range(sim.size):
        norm = float(np.linalg.norm(memory[r].astype(np.float64)))
        limit = factor * levels[r]
        if limit > 0 and norm > limit:
            memory[r] = memory[r] * np.float32(limit / norm)


def cosine_schedule(opt: torch.optim.Optimizer, spec: RunSpec,
                    train_len: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear ramp over spec.lr_warmup_steps, then cosine decay to zero at the run's end."""
    # The same schedule for every method, so that only the exchange differs.
    total = total_steps(spec, train_len)
    ramp = max(spec.lr_warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / ramp) * 0.5 * (1.0 + np.cos(np.pi * min(s, total) / total)))


def worker_gradients(model: torch.nn.Module):
    """(params, per-worker inputs, per-worker labels) -> every worker's gradients and losses."""
    def loss_fn(params, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(model, params, (xb,)), yb)

    return vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))


def clip_per_worker(grads: dict, clip: float, n: int) -> dict:
    """Each worker's gradient tensors scaled down to norm ``clip`` where above it."""
    return {k: g * torch.clamp(clip / (g.reshape(n, -1).norm(dim=1) + 1e-6),
                               max=1.0).view(-1, *[1] * (g.dim() - 1))
            for k, g in grads.items()}


class Training:
    """One run's model, optimizer, simulator and records, a global batch at a time."""

    def __init__(self, spec: RunSpec, overlap_every: int, train_len: int) -> None:
        self.spec, self.overlap_every = spec, overlap_every
        self.model = make_model(spec.task, spec.model, spec.seed)
        params = dict(self.model.named_parameters())
        self.largest = max(params, key=lambda n: params[n].numel())
        # Momentum correction moves the momentum into the workers: plain SGD after it.
        momentum = 0.0 if spec.momentum_correction else spec.momentum
        self.opt = torch.optim.SGD(self.model.parameters(), lr=spec.lr, momentum=momentum)
        self.velocity: dict[str, torch.Tensor] = {}
        self.tracker = Tracker()
        self.lag: dict[str, np.ndarray] = {}     # per tensor: sum of (mean gradient - output)
        self.schedule = cosine_schedule(self.opt, spec, train_len)
        self.sim = make_simulator(spec, {n: p.numel() for n, p in params.items()})
        self.n, self.b = spec.ranks, spec.global_batch // spec.ranks
        self.worker_grads = worker_gradients(self.model)
        self.record = {"test_acc": [], "test_loss": [], "train_loss": []}
        self.sent = 0.0
        self.window = []        # train losses since the last recorded mean
        self.steps = 0

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Every worker's gradient of its share of the batch, the exchange, one SGD step."""
        n, b = self.n, self.b
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        grads, losses = self.worker_grads(params, xb.view(n, b, -1), yb.view(n, b))
        self.window.append(losses.mean().item())
        if self.spec.clip > 0:
            grads = clip_per_worker(grads, self.spec.clip, n)
        if self.sim is not None and self.spec.ratio_warmup_steps:
            self.sim.config = dataclasses.replace(self.sim.config,
                                                  ratio=warmup_ratio(self.spec, self.steps))
        if self.sim is not None and self.spec.beta_warmup_steps:
            ramp = min(1.0, self.steps / self.spec.beta_warmup_steps)
            self.sim.config = dataclasses.replace(
                self.sim.config, beta=0.1 + (self.spec.beta - 0.1) * ramp)
        # The figures cost n extra top-k selections: every few steps only.
        track = self.spec.method != "topk" and self.steps % self.overlap_every == 0
        for name, p in self.model.named_parameters():
            g = grads[name].reshape(n, -1)
            if self.spec.momentum_correction:
                g = self.velocity[name] = self.spec.momentum * self.velocity.get(name, 0.0) + g
            out, indices = self.exchange(name, g.numpy(), track)
            if self.spec.factor_masking and indices is not None:
                self.velocity[name][:, torch.from_numpy(indices.astype(np.int64))] = 0.0
            p.grad = torch.from_numpy(out.reshape(p.shape))
        self.opt.step()
        self.schedule.step()
        self.steps += 1
        if len(self.window) == 16:
            self.record["train_loss"].append(float(np.mean(self.window)))
            self.window = []

    def exchange(self, name: str, g: np.ndarray, track: bool):
        """The averaged gradient of one tensor from the n workers' rows of
        ``g``, and the index set (None when it went dense)."""
        if self.sim is None:
            return allreduce_mean(list(g)), None
        before = [m.copy() for m in self.sim.tensors[name].memory] \
            if track and name in self.sim.tensors else None
        result = self.sim.step(name, list(g))
        self.sent += result.bytes_sent[0]
        if self.spec.memory_factor and result.indices is not None:
            bound_memories(self.sim, name, self.spec.memory_factor)
        if result.indices is not None:
            scales = [s.scale for s in self.sim.levels.last.get(name, [])] or [1.0] * self.n
            clipped = [row * np.float32(s) for row, s in zip(g, scales)]
            lag = self.lag[name] = (self.lag.get(name, 0.0) + np.mean(clipped, axis=0)
                                    - result.outputs[0])
            if before is not None:
                after = np.mean(self.sim.tensors[name].memory, axis=0)
                self.tracker.add(name, step_figures(before, clipped, result.indices, lag, after))
        return result.outputs[0], result.indices

    def evaluate(self, x_test: torch.Tensor, y_test: torch.Tensor) -> None:
        with torch.no_grad():
            logits = self.model(x_test)
            self.record["test_loss"].append(
                torch.nn.functional.cross_entropy(logits, y_test).item())
            self.record["test_acc"].append((logits.argmax(1) == y_test).float().mean().item())

    def result(self) -> dict:
        """The spec, the run's final figures and its records."""
        record, sent = self.record, self.sent
        figures = self.tracker.summary()
        if self.sim is None:    # no simulator counts dense's bytes: the byte model's ring
            sent = self.steps * sum(bytes_model.dense_ring_allreduce(p.numel(), self.n)
                                    for p in self.model.parameters())
        return {**asdict(self.spec), "steps": self.steps, "bytes_per_worker": sent,
                "final_acc": record["test_acc"][-1], "final_test_loss": record["test_loss"][-1],
                "mean_overlap": figures.get(self.largest, {}).get("overlap_own"),
                "figures": figures, "largest": self.largest, **record}


def train(spec: RunSpec, overlap_every: int = 8) -> dict:
    """One run of the study (see the module's docstring for what it records)."""
    if spec.global_batch % spec.ranks:
        raise ValueError(f"global batch {spec.global_batch} is not divisible by n={spec.ranks}")
    x, y, x_test, y_test = load_task(spec.task, spec.train_size)
    if spec.global_batch > len(x):
        raise ValueError(f"global batch {spec.global_batch} exceeds the {len(x)} training samples")
    run = Training(spec, overlap_every, len(x))
    total, epoch = total_steps(spec, len(x)), 0
    while run.steps < total:     # whole epochs, the last one cut at ``total`` steps
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 * spec.seed + epoch))
        for i in range(0, len(x) - spec.global_batch + 1, spec.global_batch):
            if run.steps == total:
                break
            batch = perm[i:i + spec.global_batch]
            run.train_step(x[batch], y[batch])
        run.evaluate(x_test, y_test)
        epoch += 1
    return run.result()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.04, 0.01, 0.0025])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="normal")
    parser.add_argument("--lr", type=float, help="overrides the regime's learning rate")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0,
                        help="the run's length in steps (overrides --epochs)")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--lr-warmup-steps", type=int, default=0)
    parser.add_argument("--clip", type=float, default=0.0)
    parser.add_argument("--task", choices=TASKS, default="synthetic")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["mlp"])
    parser.add_argument("--ratio-warmup-steps", type=int, default=0,
                        help="DGC's exponential ratio warm-up over this many steps")
    parser.add_argument("--momentum-correction", action="store_true",
                        help="DGC's momentum correction (the workers hold the momentum)")
    parser.add_argument("--memory-factor", type=float, default=0.0,
                        help="bound each memory's norm to this x the clip's level (0: off)")
    parser.add_argument("--memory-beta", type=float, default=0.0,
                        help="a worker's beta falls below --betas' where its memory holds "
                             "more than this many clip levels (0: off)")
    parser.add_argument("--beta-warmup-steps", type=int, default=0,
                        help="beta rises linearly from 0.1 to --betas' over this many steps")
    parser.add_argument("--factor-masking", action="store_true",
                        help="with --momentum-correction: zero the velocity where it was sent")
    parser.add_argument("--k-policies", nargs="+", choices=K_POLICIES, default=["ratio"],
                        help="per-layer k of ScaleCom's and top-k's runs: ratio x numel "
                             "(the library's), a floor of --k-floor, or the ratio's total k "
                             "shared by sqrt(numel)")
    parser.add_argument("--k-floor", type=int, default=32,
                        help="the floor policy's least k per compressed tensor")
    parser.add_argument("--betas", type=float, nargs="+",
                        help="ScaleCom's beta values to run (default: the method's)")
    parser.add_argument("--clip-factor", type=float, default=DEFAULT_CLIP_FACTOR,
                        help="ScaleCom's relative clip; 0 turns it off")
    parser.add_argument("--batch-per-rank", type=int, default=0,
                        help="per-worker batch (global batch = n x this); default: 256 / n")
    parser.add_argument("--json", help="write the runs here (appends to an existing file)")
    parser.add_argument("--figures-every", type=int, default=8,
                        help="steps between the diagnostics' samples (each costs n top-k)")
    parser.add_argument("--tag", default="", help="a label kept with each run (e.g. the regime)")
    return parser.parse_args()


def run_specs(args: argparse.Namespace) -> Iterator[RunSpec]:
    """Every run the command line asks for, in the order they run."""
    regime = dict(REGIMES[args.regime], **({"lr": args.lr} if args.lr else {}))
    for ranks, model in [(n, m) for n in args.ranks for m in args.models]:
        for seed in args.seeds:
            for method in args.methods:
                scalecom = method == "scalecom"
                betas = args.betas if scalecom and args.betas else [None]
                for ratio, beta, policy in [
                        (r, b, p) for r in ([1.0] if method == "dense" else args.ratios)
                        for b in betas for p in (["ratio"] if method == "dense"
                                                 else args.k_policies)]:
                    yield RunSpec(method, ranks, ratio, seed, epochs=args.epochs, steps=args.steps,
                                  warmup_steps=args.warmup_steps,
                                  lr_warmup_steps=args.lr_warmup_steps, clip=args.clip,
                                  task=args.task, model=model, beta=beta,
                                  **(remedies(args) if scalecom else {}),
                                  k_policy=policy, k_floor=args.k_floor,
                                  clip_factor=args.clip_factor or None,
                                  **({"global_batch": args.batch_per_rank * ranks}
                                     if args.batch_per_rank else {}), **regime)


def remedies(args: argparse.Namespace) -> dict:
    """The remedies the command line asks for: ScaleCom's runs take them, the
    baselines' do not."""
    return dict(ratio_warmup_steps=args.ratio_warmup_steps,
                momentum_correction=args.momentum_correction,
                factor_masking=args.factor_masking, memory_factor=args.memory_factor,
                memory_beta=args.memory_beta, beta_warmup_steps=args.beta_warmup_steps)


def saved_runs(path: str | None) -> list:
    """The runs already in ``path``, to append to: the study is run in several invocations."""
    if path:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            pass
    return []


def summary_line(spec: RunSpec, run: dict, seconds: float) -> str:
    overlap = run["mean_overlap"]
    return (f"{spec.task}/{spec.model} n={spec.ranks:<3} seed={spec.seed} {spec.method:>8} "
            f"ratio={spec.ratio:<7g} "
            f"beta={spec.beta:<5g} clip_factor={spec.clip_factor} k={spec.k_policy} "
            f"acc {run['final_acc']:.3f}  loss {run['final_test_loss']:.3f}  "
            f"{run['bytes_per_worker'] / 1e6:8.2f} MB/worker  "
            f"overlap {'-' if overlap is None else f'{overlap:.2f}'}  "
            f"({seconds:.0f} s)")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    runs = saved_runs(args.json)
    for spec in run_specs(args):
        start = time.perf_counter()
        run = dict(train(spec, args.figures_every), regime=args.regime, tag=args.tag)
        print(summary_line(spec, run, time.perf_counter() - start), flush=True)
        if args.json:   # after every run, so an interrupted study keeps its runs
            runs.append(run)
            with open(args.json, "w") as f:
                json.dump(runs, f)


if __name__ == "__main__":
    main()
