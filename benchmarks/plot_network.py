"""Tables and plots from benchmarks.network's JSON files (plots need matplotlib).

    python -m benchmarks.plot_network docs/data/network_resnet50_*.json \\
        --out docs/img/network_resnet50

Prints one Markdown table per rate (rank 0's figures: medians over the
measured steps) and writes OUT.png: communication time, bytes per rank and
speedup over dense against n, and the CPU compression cost, one row of
panels per rate.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from benchmarks.methods import RING, SCALECOM
from benchmarks.plot_convergence import label, save
from benchmarks._pyplot import pyplot

ORDER = ("dense", "fp16", "topk", "ddp dense", "ddp fp16", "powersgd", "ddp hook", SCALECOM,
         RING)
NAMES = {"dense": "Horovod dense", "fp16": "Horovod fp16", "topk": "top-k + allgather",
         "ddp dense": "DDP dense", "ddp fp16": "DDP fp16 hook",
         "powersgd": "PowerSGD (rank 4)", "ddp hook": "ScaleCom DDP hook",
         SCALECOM: "ScaleCom (Horovod path)", RING: "ScaleCom ring"}
# One colour per method, fixed: the published figures' colours, from before "ddp hook"
# joined ORDER (a colour by position in ORDER would have shifted ScaleCom's two).
COLOURS = {"dense": "C0", "fp16": "C1", "topk": "C2", "powersgd": "C3", SCALECOM: "C4",
           RING: "C5", "ddp hook": "C6", "ddp dense": "C7", "ddp fp16": "C8"}


def load(paths):
    by_rate = defaultdict(dict)       # rate -> n -> {method: row}
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        by_rate[run["label"] or "loopback"][run["ranks"]] = {r["method"]: r for r in run["rows"]}
    return by_rate


def tables(by_rate) -> str:
    out = []
    for rate, by_n in by_rate.items():
        out += [f"**{rate}**", "", "| n | method | step ms | comm ms | compress ms | MB/rank | "
                "less than dense | step speedup over dense |", "|---|---|---|---|---|---|---|---|"]
        for n in sorted(by_n):
            rows = by_n[n]
            dense = rows.get("dense")
            for method in ORDER:
                if method not in rows:
                    continue
                r = rows[method]
                c = "-" if r["compress_s"] is None else f"{1e3 * r['compress_s']:.1f}"
                speed = f"{dense['step_s'] / r['step_s']:.2f}x" if dense else "-"
                out.append(f"| {n} | {NAMES[method]} | {1e3 * r['step_s']:.1f} | "
                           f"{1e3 * r['comm_s']:.1f} | {c} | {r['bytes_per_rank'] / 1e6:.3f} | "
                           f"{r['compression']:.1f}x | {speed} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    by_rate = load(args.json)
    print(tables(by_rate))
    plt = pyplot()

    rates = list(by_rate)
    fig, axes = plt.subplots(len(rates), 4, figsize=(20, 4 * len(rates)), squeeze=False)
    for row_axes, rate in zip(axes, rates):
        by_n = by_rate[rate]
        ns = sorted(by_n)
        comm_ax, bytes_ax, speed_ax, cpu_ax = row_axes
        for method in ORDER:
            have = [n for n in ns if method in by_n[n]]
            if not have:
                continue
            rows = [by_n[n][method] for n in have]
            style = dict(marker="o", label=NAMES[method], color=COLOURS[method])
            comm_ax.plot(have, [1e3 * r["comm_s"] for r in rows], **style)
            bytes_ax.plot(have, [r["bytes_per_rank"] / 1e6 for r in rows], **style)
            if all("dense" in by_n[n] for n in have):
                speed_ax.plot(have, [by_n[n]["dense"]["step_s"] / by_n[n][method]["step_s"]
                                     for n in have], **style)
            if all(r["compress_s"] is not None for r in rows) and method in ("topk", SCALECOM,
                                                                             RING):
                cpu_ax.plot(have, [1e3 * r["compress_s"] for r in rows], **style)
        bytes_ax.set_yscale("log")
        for ax in row_axes:
            ax.set_xticks(ns)
        label(comm_ax, "n (ranks)", "communication ms / step", rate)
        label(bytes_ax, "n (ranks)", "MB sent per rank / step", rate)
        label(speed_ax, "n (ranks)", "step speedup over dense", rate)
        label(cpu_ax, "n (ranks)", "compression ms / step (CPU)", rate)
        for ax in (bytes_ax, speed_ax, cpu_ax):
            ax.legend(fontsize=7)
    save(fig, axes[0][0], f"{args.out}.png")


if __name__ == "__main__":
    main()
