"""Convergence study: n simulated workers in one process, exact to the reference.

    python -m horovod_scalecom.benchmarks.convergence --ranks 4 8 \\
        --ratios 0.04 0.01 0.0025 --seeds 0 1 2 --json docs/convergence/normal.json
    python -m horovod_scalecom.benchmarks.convergence --task digits --ranks 4 \\
        --batch-per-rank 16 --epochs 30 --lr 0.4 --betas 0.1 1 --json digits.json

Two tasks: the synthetic one (horovod_scalecom.benchmarks.synthetic) and
real data that ships inside scikit-learn, its 8x8 handwritten digits (1,797
images; the first 1,200 of a fixed shuffle train, the other 597 test).
Every step draws one global batch, splits it into n equal per-worker batches, takes each worker's gradient
(torch.func.vmap) and hands the n gradients of every tensor to a simulator of
``horovod_scalecom.reference``: HorovodPathSimulator (ScaleCom through Horovod's
allreduce) for ScaleCom (beta 0.1) and classic error feedback (the same CLT-k
with beta 1), TopkAllgatherSimulator for local top-k + allgather. The
averaged gradient then goes to an ordinary torch SGD with momentum, as after
hvd.DistributedOptimizer. The real ScaleCom compressor under
hvd.DistributedOptimizer is bitwise equal to HorovodPathSimulator for n = 2 and
equal up to MPI's summation order above (tests/test_torch_compressor.py), so
the n workers here train as n real ranks would, at a cost that lets n reach
256 on a laptop.

Per run it records the test accuracy and loss after every epoch, the train
loss every 16 steps, the bytes per worker by the byte model, and for the
CLT-k methods the overlap |I_leader & I_r| / k between the leader's index set
and each worker's own top-k set of its p_r = m_r + g_r (the similarity the
paper's contraction argument relies on), on the largest tensor.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap

from horovod_scalecom import bytes_model
from horovod_scalecom.benchmarks.synthetic import make_data
from horovod_scalecom.config import DEFAULT_CLIP_FACTOR, ScaleComConfig
from horovod_scalecom.reference import HorovodPathSimulator, TopkAllgatherSimulator
from horovod_scalecom.reference.horovod_path import allreduce_mean

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
    train_size: int = 16384
    task: str = "synthetic"      # or "digits" (scikit-learn's, shipped with the package)
    beta: float | None = None    # None: the method's (ScaleCom 0.1, classic EF 1)
    clip_factor: float | None = DEFAULT_CLIP_FACTOR   # ScaleCom's relative clip; None: off

    def __post_init__(self) -> None:
        if self.beta is None:
            self.beta = {"scalecom": 0.1, "ef": 1.0}.get(self.method, float("nan"))


def digits() -> tuple[np.ndarray, ...]:
    """scikit-learn's 8x8 digits scaled to [0, 1]: (x_train, y_train, x_test, y_test)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("the digits task needs scikit-learn (pip install scikit-learn); "
                         "its data ship inside the package, nothing is downloaded") from exc
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def load_task(spec: "RunSpec") -> tuple[torch.Tensor, ...]:
    if spec.task == "digits":
        return tuple(map(torch.from_numpy, digits()))
    x, y = make_data(seed=100, n=spec.train_size)
    x_test, y_test = make_data(seed=99, n=4096)
    return tuple(map(torch.from_numpy, (x, y, x_test, y_test)))


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))


def make_simulator(spec: RunSpec):
    if spec.method == "dense":
        return None
    config = ScaleComConfig(ratio=spec.ratio, beta=spec.beta if spec.method != "topk" else 1.0,
                            warmup_steps=spec.warmup_steps,
                            clip_factor=spec.clip_factor if spec.method != "topk" else None)
    if spec.method == "topk":
        return TopkAllgatherSimulator(spec.ranks, config)
    return HorovodPathSimulator(spec.ranks, config)


def own_topk_overlap(sim: HorovodPathSimulator, name: str, grads: np.ndarray, k: int) -> list:
    """Each worker's own top-k set of p_r = m_r + g_r, before the step updates m_r."""
    if name not in sim.tensors:
        return []
    return [np.argpartition(-np.abs(sim.memory(name, r) + grads[r]), k - 1)[:k]
            for r in range(sim.size)]


def cosine_schedule(opt: torch.optim.Optimizer, spec: RunSpec,
                    train_len: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear ramp over spec.lr_warmup_steps, then cosine decay to zero at the run's end."""
    # The same schedule for every method, so that only the exchange differs.
    total = spec.epochs * (train_len // spec.global_batch)
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
        self.model = make_model(spec.seed)
        params = dict(self.model.named_parameters())
        self.largest = max(params, key=lambda n: params[n].numel())
        self.opt = torch.optim.SGD(self.model.parameters(), lr=spec.lr, momentum=spec.momentum)
        self.schedule = cosine_schedule(self.opt, spec, train_len)
        self.sim = make_simulator(spec)
        self.n, self.b = spec.ranks, spec.global_batch // spec.ranks
        self.worker_grads = worker_gradients(self.model)
        self.record = {"test_acc": [], "test_loss": [], "train_loss": [], "overlap": []}
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
        # Each overlap costs an extra top-k per worker: the largest tensor, every few steps.
        track = self.spec.method != "topk" and self.steps % self.overlap_every == 0
        for name, p in self.model.named_parameters():
            out = self.exchange(name, grads[name].reshape(n, -1).numpy(),
                                track and name == self.largest)
            p.grad = torch.from_numpy(out.reshape(p.shape))
        self.opt.step()
        self.schedule.step()
        self.steps += 1
        if len(self.window) == 16:
            self.record["train_loss"].append(float(np.mean(self.window)))
            self.window = []

    def exchange(self, name: str, g: np.ndarray, track: bool) -> np.ndarray:
        """The averaged gradient of one tensor from the n workers' rows of ``g``."""
        if self.sim is None:
            return allreduce_mean(list(g))
        own = own_topk_overlap(self.sim, name, g, self.sim.config.k(g.shape[1])) if track else []
        result = self.sim.step(name, list(g))
        self.sent += result.bytes_sent[0]
        if own and result.indices is not None:
            lead = set(result.indices.tolist())
            self.record["overlap"].append(float(np.mean(
                [len(lead.intersection(s.tolist())) / len(lead) for s in own])))
        return result.outputs[0]

    def evaluate(self, x_test: torch.Tensor, y_test: torch.Tensor) -> None:
        with torch.no_grad():
            logits = self.model(x_test)
            self.record["test_loss"].append(
                torch.nn.functional.cross_entropy(logits, y_test).item())
            self.record["test_acc"].append((logits.argmax(1) == y_test).float().mean().item())

    def result(self) -> dict:
        """The spec, the run's final figures and its records."""
        record, sent = self.record, self.sent
        if self.sim is None:    # no simulator counts dense's bytes: the byte model's ring
            sent = self.steps * sum(bytes_model.dense_ring_allreduce(p.numel(), self.n)
                                    for p in self.model.parameters())
        return {**asdict(self.spec), "steps": self.steps, "bytes_per_worker": sent,
                "final_acc": record["test_acc"][-1], "final_test_loss": record["test_loss"][-1],
                "mean_overlap": float(np.mean(record["overlap"])) if record["overlap"] else None,
                **record}


def train(spec: RunSpec, overlap_every: int = 8) -> dict:
    """One run of the study (see the module's docstring for what it records)."""
    if spec.global_batch % spec.ranks:
        raise ValueError(f"global batch {spec.global_batch} is not divisible by n={spec.ranks}")
    x, y, x_test, y_test = load_task(spec)
    run = Training(spec, overlap_every, len(x))
    for epoch in range(spec.epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 * spec.seed + epoch))
        for i in range(0, len(x) - spec.global_batch + 1, spec.global_batch):
            batch = perm[i:i + spec.global_batch]
            run.train_step(x[batch], y[batch])
        run.evaluate(x_test, y_test)
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
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--lr-warmup-steps", type=int, default=0)
    parser.add_argument("--clip", type=float, default=0.0)
    parser.add_argument("--task", choices=["synthetic", "digits"], default="synthetic")
    parser.add_argument("--betas", type=float, nargs="+",
                        help="ScaleCom's beta values to run (default: the method's)")
    parser.add_argument("--clip-factor", type=float, default=DEFAULT_CLIP_FACTOR,
                        help="ScaleCom's relative clip; 0 turns it off")
    parser.add_argument("--batch-per-rank", type=int, default=0,
                        help="per-worker batch (global batch = n x this); default: 256 / n")
    parser.add_argument("--json", help="write the runs here (appends to an existing file)")
    return parser.parse_args()


def run_specs(args: argparse.Namespace) -> Iterator[RunSpec]:
    """Every run the command line asks for, in the order they run."""
    regime = dict(REGIMES[args.regime], **({"lr": args.lr} if args.lr else {}))
    for ranks in args.ranks:
        for seed in args.seeds:
            for method in args.methods:
                betas = args.betas if method == "scalecom" and args.betas else [None]
                for ratio, beta in [(r, b) for r in ([1.0] if method == "dense" else args.ratios)
                                    for b in betas]:
                    yield RunSpec(method, ranks, ratio, seed, epochs=args.epochs,
                                  warmup_steps=args.warmup_steps,
                                  lr_warmup_steps=args.lr_warmup_steps, clip=args.clip,
                                  task=args.task, beta=beta,
                                  clip_factor=args.clip_factor or None,
                                  **({"global_batch": args.batch_per_rank * ranks}
                                     if args.batch_per_rank else {}), **regime)


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
    return (f"n={spec.ranks:<3} seed={spec.seed} {spec.method:>8} ratio={spec.ratio:<7g} "
            f"beta={spec.beta:<5g} clip_factor={spec.clip_factor} "
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
        run = dict(train(spec), regime=args.regime)
        print(summary_line(spec, run, time.perf_counter() - start), flush=True)
        if args.json:   # after every run, so an interrupted study keeps its runs
            runs.append(run)
            with open(args.json, "w") as f:
                json.dump(runs, f)


if __name__ == "__main__":
    main()
