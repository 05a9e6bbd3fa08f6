"""Projected speedup of the ScaleCom ring over dense, against bandwidth and n.

    python -m benchmarks.plot_plan --constants docs/data/plan/calibration.json \\
        --out docs/img/plan_speedup.png

One panel per model (ResNet-50, BERT-base, a 1B-parameter transformer), one
line per n (2 to 1024), link rates 1 to 400 Gbit/s. Projections, not
measurements: the GPU is an A100 80GB (its kernels' costs projected from
the calibration onto 2.039 TB/s of memory bandwidth), the network RDMA
(no host TCP cost) with --latency-us per message, and backward times from
published throughput (BACKWARD below, sources in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from horovod_scalecom.plan.constants import gpu_projection, load
from horovod_scalecom.plan.model import DENSE, RING, Cluster, Settings, predict
from horovod_scalecom.plan.workload import model_shapes

from benchmarks._pyplot import pyplot

A100_HBM = 2.039e12
#: Backward of one A100 80GB step, ms, and how it was derived (docs/benchmarks.md).
BACKWARD = {
    # NVIDIA DeepLearningExamples, ResNet-50 v1.5 PyTorch, 1x A100 80GB, AMP:
    # 2470 img/s at batch 256 = 103.6 ms per step; backward about 2/3 of it.
    "resnet50": 2 / 3 * 256 / 2470 * 1e3,
    # 4 N tokens FLOPs (backward, 2/3 of 6 N D) at 40% of the A100's 312 TFLOP/s
    # (bf16 dense peak), 16384 tokens per GPU (32 x 512 for BERT, 8 x 2048 for the 1B).
    "bert-base": 4 * 109_482_240 * 16384 / (0.4 * 312e12) * 1e3,
    "transformer-1b": 4 * 1_114_386_432 * 16384 / (0.4 * 312e12) * 1e3,
}
TITLES = {"resnet50": "ResNet-50", "bert-base": "BERT-base", "transformer-1b": "1B transformer"}
WORKERS = (2, 8, 64, 256, 1024)


def curves(constants_path: str, latency_us: float, points: int = 24) -> dict:
    """{model: {n: (gbit array, speedup array)}} for the ring over dense."""
    c = gpu_projection(load(constants_path), A100_HBM)
    gbits = np.logspace(0, np.log10(400), points)
    out = {}
    for name, backward_ms in BACKWARD.items():
        shapes = model_shapes(name)
        out[name] = {}
        for n in WORKERS:
            speed = []
            for gbit in gbits:
                cluster = Cluster(workers=n, gbit=float(gbit), backward_s=backward_ms / 1e3,
                                  latency_s=latency_us / 1e6, tcp=False)
                dense = predict(DENSE, shapes, cluster, c, Settings()).step_s
                speed.append(dense / predict(RING, shapes, cluster, c, Settings()).step_s)
            out[name][n] = (gbits, np.array(speed))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constants", required=True, help="a calibration file")
    parser.add_argument("--out", default="docs/img/plan_speedup.png")
    parser.add_argument("--latency-us", type=float, default=10.0,
                        help="one message's latency on the projected network")
    args = parser.parse_args(argv)
    plt = pyplot()
    data = curves(args.constants, args.latency_us)
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.8), sharey=True)
    for ax, (name, by_n) in zip(axes, data.items()):
        for n, (gbits, speed) in by_n.items():
            ax.plot(gbits, speed, label=f"n = {n}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link, Gbit/s per GPU")
        ax.set_title(f"{TITLES[name]} (backward {BACKWARD[name]:.0f} ms)", fontsize=10)
        ax.grid(True, which="both", lw=0.3)
    axes[0].set_ylabel("projected step speedup, ring / dense")
    axes[-1].legend(fontsize=8)
    fig.suptitle("PROJECTION: A100 80GB, RDMA, ratio 0.01; compression costs projected from "
                 "a CPU calibration", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
