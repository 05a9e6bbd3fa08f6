"""Time one ScaleCom step of the C++ core against plain torch, on the CPU.

    python -m benchmarks.core_step [--sizes 1e6 10e6 25e6]

For each size, ratio and thread count it times, median of --repeats runs:

  torch     p = m + g; torch.topk(|p|); c = p[I]; low-pass update with index ops
  leader    torch.ops.scalecom.select_topk + gather_update_ (what the leader runs)
  follower  torch.ops.scalecom.gather_update_ alone (every other rank)
  one pass  m += beta * g in place: the least memory traffic any step needs
  clip      torch.ops.scalecom.sum_squares + clip_step: the relative clip's norm, the
            pass every rank adds by default (scaling, when it clips, is one
            more in-place pass)

and prints speedups as ratios measured in the same run, so a noisy machine
moves numerator and denominator together. --json writes the rows too.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from horovod_scalecom.config import num_selected
from horovod_scalecom.plan.calibrate import timeit
from horovod_scalecom.torch._ops import ops


def torch_step(m: torch.Tensor, g: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    p = m + g
    idx = torch.topk(p.abs(), k, sorted=False).indices
    c = p[idx]
    kept = m[idx] * (1 - beta)
    m.add_(g, alpha=beta)
    m[idx] = kept
    return c


def measure(numel: int, ratio: float, threads: int, repeats: int, beta: float = 0.1) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(numel)
    g = torch.randn(numel, generator=gen)
    m = torch.randn(numel, generator=gen) * 0.1
    k = num_selected(numel, ratio)
    indices = ops.select_topk(m, g, k)

    def leader():
        idx = ops.select_topk(m, g, k)
        ops.gather_update_(m, g, idx, beta)

    row = {
        "numel": numel, "ratio": ratio, "k": k, "threads": threads,
        "torch_s": timeit(lambda: torch_step(m, g, k, beta), repeats),
        "leader_s": timeit(leader, repeats),
        "select_s": timeit(lambda: ops.select_topk(m, g, k), repeats),
        "follower_s": timeit(lambda: ops.gather_update_(m, g, indices, beta), repeats),
        "one_pass_s": timeit(lambda: m.add_(g, alpha=beta), repeats),
        "clip_s": timeit(lambda: ops.clip_step(ops.sum_squares(g), 1e30, 2.0, 0.98), repeats),
    }
    row["speedup"] = row["torch_s"] / row["leader_s"]
    row["leader_vs_pass"] = row["leader_s"] / row["one_pass_s"]
    row["follower_vs_pass"] = row["follower_s"] / row["one_pass_s"]
    row["clip_vs_follower"] = row["clip_s"] / row["follower_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="ScaleCom C++ core step vs plain torch (CPU)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 10e6, 25e6])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--threads", type=int, nargs="+",
                        default=sorted({1, torch.get_num_threads()}))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads available")
    header = (f"{'numel':>10} {'ratio':>6} {'thr':>3} {'torch ms':>9} {'leader ms':>9} "
              f"{'select ms':>9} {'follow ms':>9} {'1 pass ms':>9} {'speedup':>7} "
              f"{'lead/pass':>9} {'fol/pass':>8} {'clip ms':>8} {'clip/fol':>8}")
    print(header)
    rows = []
    for size in args.sizes:
        for ratio in args.ratios:
            for threads in args.threads:
                r = measure(int(size), ratio, threads, args.repeats)
                rows.append(r)
                print(f"{r['numel']:>10} {ratio:>6} {threads:>3} {r['torch_s'] * 1e3:>9.1f} "
                      f"{r['leader_s'] * 1e3:>9.1f} {r['select_s'] * 1e3:>9.1f} "
                      f"{r['follower_s'] * 1e3:>9.1f} {r['one_pass_s'] * 1e3:>9.1f} "
                      f"{r['speedup']:>6.1f}x {r['leader_vs_pass']:>8.1f}x "
                      f"{r['follower_vs_pass']:>7.1f}x {r['clip_s'] * 1e3:>8.1f} "
                      f"{r['clip_vs_follower']:>7.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
