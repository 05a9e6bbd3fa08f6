"""Times the CUDA kernels against torch.topk + index ops and the bandwidth bound.

    python tests/gpu/bench_kernels.py [--numel 25000000] [--ratio 0.01] [--json out.json]

Needs a GPU, a CUDA build of torch, and the package built against it with nvcc
(its torch ops then have their CUDA kernels). First it checks the
kernels against the CPU core on one input (indices equal, values and memory
bitwise), then times with CUDA events (median of --repeats):

* leader step: select_topk + gather_update (what the leader runs);
* follower step: gather_update alone;
* torch: p = m + g, torch.topk(|p|, k), c = p[I], the low-pass update with
  index ops (what a framework-only implementation does);
* bound: the bytes the fused step must move (read m and g, write m, plus the
  k indices and values) at the device-to-device copy bandwidth measured in
  the same run.

Targets at 25M, ratio 0.01: leader step within 3x of the bound
and at least 5x faster than torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu.kernels import torch_ops  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, nargs="+", default=[1_000_000, 25_000_000])
    parser.add_argument("--ratio", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    kernels = ops = torch_ops()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    m = torch.randn(1 << 20)
    g = torch.randn(1 << 20)
    k = 10_486
    idx = kernels.select_topk(m.cuda(), g.cuda(), k)
    assert torch.equal(idx.cpu(), ops.select_topk(m, g, k)), "indices differ from the CPU core"
    print("check against the CPU core: indices equal", flush=True)

    rows = []
    for numel in args.numel:
        src = torch.empty(numel, device="cuda")
        dst = torch.empty_like(src)
        copy_ms = timed(lambda: dst.copy_(src), args.repeats)
        bandwidth = 2 * 4 * numel / (copy_ms * 1e-3)          # bytes/s, read + write
        for ratio in args.ratio:
            k = max(1, int(np.ceil(ratio * numel)))
            memory = torch.randn(numel, device="cuda")
            grad = torch.randn(numel, device="cuda")
            idx = kernels.select_topk(memory, grad, k)

            def leader():
                i = kernels.select_topk(memory, grad, k)
                kernels.gather_update_(memory, grad, i, 0.1)

            def follower():
                kernels.gather_update_(memory, grad, idx, 0.1)

            def baseline():
                p = memory + grad
                top = torch.topk(p.abs(), k, sorted=False).indices
                c = p[top]
                rest = memory.add(grad, alpha=0.1)
                rest[top] = memory[top] * 0.9
                memory.copy_(rest)
                return c

            lead_ms = timed(leader, args.repeats)
            follow_ms = timed(follower, args.repeats)
            torch_ms = timed(baseline, args.repeats)
            bound_ms = 1e3 * (12 * numel + 8 * k) / bandwidth
            row = {"numel": numel, "ratio": ratio, "k": k, "leader_ms": lead_ms,
                   "follower_ms": follow_ms, "torch_ms": torch_ms, "bound_ms": bound_ms,
                   "copy_GBps": bandwidth / 1e9, "leader_over_bound": lead_ms / bound_ms,
                   "speedup_over_torch": torch_ms / lead_ms}
            rows.append(row)
            print(f"numel {numel:>10} ratio {ratio:<6} leader {lead_ms:8.3f} ms  follower "
                  f"{follow_ms:8.3f} ms  torch {torch_ms:8.3f} ms  bound {bound_ms:7.3f} ms  "
                  f"leader/bound {lead_ms / bound_ms:5.1f}x  speedup {torch_ms / lead_ms:5.1f}x",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
