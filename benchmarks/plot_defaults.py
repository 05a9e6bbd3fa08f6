"""Table and plot of the defaults study (docs/convergence.md, section 0; needs matplotlib).

    python -m benchmarks.plot_defaults \\
        normal=docs/data/digits_normal.json recipe=docs/data/digits_recipe.json \\
        recipe+warm-up=docs/data/digits_recipe_warmup.json --out docs/img/digits

Each argument is REGIME=FILE of convergence-study runs (``--task digits``).
Prints one Markdown row per (regime, n, ratio): dense, ScaleCom as it was
(beta 0.1, no clip), and ScaleCom with the relative clip at each beta, as
mean ± sd over seeds; writes OUT_beta.png (accuracy against beta, one panel
per regime and n).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from horovod_scalecom.config import DEFAULT_CLIP_FACTOR

from benchmarks._pyplot import pyplot

BETAS = (0.05, 0.1, 0.2, 0.3, 1.0)


def cells(runs) -> dict:
    """(n, column) -> accuracies; column: "dense", ("noclip", ratio), (beta, ratio)."""
    out = defaultdict(list)
    for r in runs:
        if r["method"] == "dense":
            out[(r["ranks"], "dense")].append(r["final_acc"])
        elif r["method"] == "scalecom":
            column = ("noclip" if r.get("clip_factor") is None else r["beta"], r["ratio"])
            out[(r["ranks"], column)].append(r["final_acc"])
    return out


def fmt(values) -> str:
    if not values:
        return "-"
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std():.1f}"


def table(regimes: dict[str, list]) -> str:
    head = ["regime", "n", "lr", "ratio", "dense", "beta 0.1, no clip (before)"] + [
        f"beta {b:g}" + (" (default)" if b == 0.1 else "") for b in BETAS]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for regime, runs in regimes.items():
        acc = cells(runs)
        for n in sorted({r["ranks"] for r in runs}):
            lr = next(r["lr"] for r in runs if r["ranks"] == n)
            for ratio in sorted({r["ratio"] for r in runs if r["method"] != "dense"}, reverse=True):
                row = [regime, str(n), f"{lr:g}", f"1/{round(1 / ratio)}", fmt(acc[(n, "dense")]),
                       fmt(acc[(n, ("noclip", ratio))])] + [fmt(acc[(n, (b, ratio))]) for b in BETAS]
                rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regimes", nargs="+", help="REGIME=FILE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    regimes = {}
    for item in args.regimes:
        regime, path = item.split("=", 1)
        with open(path) as f:
            regimes[regime] = json.load(f)
    print(table(regimes))

    plt = pyplot()
    sizes = sorted({r["ranks"] for runs in regimes.values() for r in runs})
    fig, axes = plt.subplots(len(sizes), len(regimes), figsize=(4.2 * len(regimes), 3.4 * len(sizes)),
                             squeeze=False)
    for row, n in enumerate(sizes):
        for col, regime in enumerate(regimes):
            panel(axes[row][col], regime, n, cells(regimes[regime]))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{args.out}_beta.png", dpi=100)


def panel(ax, regime: str, n: int, acc: dict) -> None:
    """Accuracy against beta at both ratios, dense as a line, no clip as crosses."""
    ax.axhline(100 * np.mean(acc[(n, "dense")]), color="black", ls="--", label="dense")
    for ratio, color in ((0.01, "C0"), (0.0025, "C1")):
        means = [100 * np.mean(acc[(n, (b, ratio))]) if acc[(n, (b, ratio))] else np.nan
                 for b in BETAS]
        ax.plot(BETAS, means, marker="o", color=color,
                label=f"1/{round(1 / ratio)}, clip_factor {DEFAULT_CLIP_FACTOR:g}")
        if acc[(n, ("noclip", ratio))]:
            ax.plot([0.1], [100 * np.mean(acc[(n, ("noclip", ratio))])], marker="x",
                    color=color, ls="", markersize=9, label=f"1/{round(1 / ratio)}, no clip")
    ax.set_xscale("log")
    ax.set_xticks(BETAS, [f"{b:g}" for b in BETAS])
    ax.minorticks_off()
    ax.set_xlabel("beta")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"{regime}, n = {n}", fontsize=10)
    ax.grid(alpha=0.3)

if __name__ == "__main__":
    main()
