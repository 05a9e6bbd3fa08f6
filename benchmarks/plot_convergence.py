"""Plots and a Markdown table from the convergence study's JSON (needs matplotlib).

    python -m benchmarks.plot_convergence docs/convergence/normal.json \\
        --out docs/img/normal

Writes OUT_acc.png (final test accuracy against compression, one panel per
n), OUT_curves.png (test accuracy per epoch at ratio 1/100) and, with
--by-n, OUT_by_n.png (accuracy and the leader/worker top-k overlap against
n); prints the table of mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from benchmarks._pyplot import pyplot

LABELS = {"dense": "dense (Horovod)", "scalecom": "ScaleCom (beta 0.1)",
          "ef": "CLT-k + classic EF (beta 1)", "topk": "local top-k + allgather"}


def group(runs, keys):
    out = defaultdict(list)
    for run in runs:
        out[tuple(run[k] for k in keys)].append(run)
    return out


def name(method: str, clip: float) -> str:
    return LABELS[method] + (f", clipped to {clip:g}" if clip else "")


def table(runs) -> str:
    rows = ["| n | method | ratio | clip | test accuracy (mean ± sd over seeds) | seeds | "
            "MB sent per worker (run) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    cells = group(runs, ("ranks", "clip", "method", "ratio"))
    for (n, clip, method, ratio), cell in sorted(
            cells.items(), key=lambda kv: (kv[0][0], kv[0][1], list(LABELS).index(kv[0][2]),
                                           -kv[0][3])):
        acc = np.array([r["final_acc"] for r in cell])
        ratio_s = "1" if method == "dense" else f"1/{round(1 / ratio)}"
        rows.append(f"| {n} | {LABELS[method]} | {ratio_s} | {clip or '-'} | "
                    f"{acc.mean():.3f} ± {acc.std():.3f} | {len(cell)} | "
                    f"{np.mean([r['bytes_per_worker'] for r in cell]) / 1e6:.2f} |")
    return "\n".join(rows)


def label(ax, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def save(fig, legend_ax, path: str) -> None:
    legend_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="one or more files of the study's runs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--by-n", action="store_true", help="also plot against n")
    return parser.parse_args()


def load(paths) -> list:
    runs = []
    for path in paths:
        with open(path) as f:
            runs += json.load(f)
    return runs


def accuracy_panel(ax, runs, n: int) -> None:
    """Final test accuracy against compression at ``n`` workers, a line per method and clip."""
    for method in LABELS:
        for clip in sorted({r["clip"] for r in runs}):
            cells = group([r for r in runs if r["ranks"] == n and r["method"] == method
                           and r["clip"] == clip], ("ratio",))
            if not cells:
                continue
            ratios = sorted(cells)
            x = [1 / r[0] for r in ratios]
            acc = [np.mean([c["final_acc"] for c in cells[r]]) for r in ratios]
            style = ":" if clip else "-"
            if method == "dense":
                ax.axhline(acc[0], color="black", ls="--" if not clip else ":",
                           label=name(method, clip))
            else:
                ax.plot(x, acc, marker="o", ls=style, label=name(method, clip))
    ax.set_xscale("log")
    ticks = sorted({round(1 / r["ratio"]) for r in runs if r["method"] != "dense"})
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.minorticks_off()
    label(ax, "compression (1 / ratio)", "final test accuracy", f"n = {n}")


def curves_panel(ax, runs, n: int) -> None:
    """Test accuracy per epoch at ``n`` workers and ratio 1/100 (dense at its own 1)."""
    for method in LABELS:
        for clip in sorted({r["clip"] for r in runs}):
            cell = [r for r in runs if r["ranks"] == n and r["method"] == method
                    and r["clip"] == clip
                    and (method == "dense" or abs(r["ratio"] - 0.01) < 1e-12)]
            if cell:
                curves = np.mean([r["test_acc"] for r in cell], axis=0)
                ax.plot(np.arange(1, len(curves) + 1), curves, marker=".",
                        ls=":" if clip else "-", label=name(method, clip))
    label(ax, "epoch", "test accuracy", f"n = {n}, ratio 1/100")


def per_n_figure(plt, runs, panel, path: str) -> None:
    """One ``panel(ax, runs, n)`` per n, side by side, saved to ``path``."""
    sizes = sorted({r["ranks"] for r in runs})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        panel(ax, runs, n)
    save(fig, axes[0][0], path)


def by_n_figure(plt, runs, path: str) -> None:
    """Accuracy and the leader/worker top-k overlap against n, at ratio 1/100."""
    fig, (acc_ax, ov_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for method in LABELS:
        cells = group([r for r in runs if r["method"] == method
                       and (method == "dense" or abs(r["ratio"] - 0.01) < 1e-12)], ("ranks",))
        ns = sorted(cells)
        if not ns:
            continue
        x = [n[0] for n in ns]
        acc_ax.plot(x, [np.mean([c["final_acc"] for c in cells[n]]) for n in ns],
                    marker="o", label=LABELS[method])
        if method in ("scalecom", "ef"):
            ov_ax.plot(x, [np.mean([c["mean_overlap"] for c in cells[n]]) for n in ns],
                       marker="o", label=LABELS[method])
    for ax in (acc_ax, ov_ax):
        ax.set_xscale("log", base=2)
    label(acc_ax, "n (workers)", "final test accuracy", "ratio 1/100")
    label(ov_ax, "n (workers)", "mean |I_leader ∩ I_r| / k", "leader vs own top-k set")
    ov_ax.legend(fontsize=8)
    save(fig, acc_ax, path)


def main() -> None:
    args = parse_args()
    plt = pyplot()
    runs = load(args.json)
    print(table(runs))
    per_n_figure(plt, runs, accuracy_panel, f"{args.out}_acc.png")
    per_n_figure(plt, runs, curves_panel, f"{args.out}_curves.png")
    if args.by_n:
        by_n_figure(plt, runs, f"{args.out}_by_n.png")


if __name__ == "__main__":
    main()
