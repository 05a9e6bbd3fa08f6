"""Table and plot of the convergence study (docs/convergence.md; the plot needs matplotlib).

    python -m benchmarks.plot_study docs/data/study/*.json --out docs/img/study

Reads convergence-study runs (any number of files), groups them by data
set, model, regime (the runs' ``--tag``), n and ratio, and prints one
Markdown row per group: dense, then each variant as mean ± sd over seeds and
its gap to dense's mean in points. Writes OUT_gap.png: the gap to dense
against n, one panel per data set/model and ratio, a line per variant and
regime. ``--k-table`` prints the per-layer k policies of the study
(``--k-policies``) side by side instead, with their bytes.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from benchmarks._pyplot import pyplot


def variant(run: dict) -> str:
    """A run's method and knobs, as a column name."""
    if run["method"] == "dense":
        return "dense"
    if run["method"] == "topk":
        return "top-k allgather"
    clip = run.get("clip_factor")
    name = f"beta {run['beta']:g}, clip {'off' if clip is None else f'{clip:g}'}"
    extras = [label for key, label in (("momentum_correction", "momentum corr."),
                                       ("factor_masking", "masking")) if run.get(key)]
    if run.get("ratio_warmup_steps"):
        extras.append(f"ratio warm-up {run['ratio_warmup_steps']}")
    if run.get("beta_warmup_steps"):
        extras.append(f"beta from 0.1 over {run['beta_warmup_steps']} steps")
    if run.get("memory_factor"):
        extras.append(f"memory bound {run['memory_factor']:g}")
    if run.get("memory_beta"):
        extras.append(f"memory beta {run['memory_beta']:g}")
    if run.get("k_policy", "ratio") != "ratio":
        extras.append(k_label(run))
    return ", ".join([name] + extras)


def k_label(run: dict) -> str:
    """A run's per-layer k policy, in words."""
    policy = run.get("k_policy", "ratio")
    return {"floor": f"k floor {run.get('k_floor')}",
            "equal-bytes": "k by sqrt(numel), equal bytes"}.get(policy, "k = ratio x numel")


def k_table(runs: list[dict]) -> str:
    """A row per data/model, n, ratio, method, beta and k policy: the
    accuracy over seeds with its gap to dense, and the bytes per worker over
    the run (mean over seeds, in MB) and against the same method's ratio
    policy in the same cell."""
    acc: dict = defaultdict(dict)
    sent: dict = defaultdict(dict)
    for r in runs:
        if r["method"] not in ("dense", "scalecom", "topk"):
            continue
        cell = (f"{r['task']}/{r.get('model', 'mlp')}", r["ranks"])
        # Only ScaleCom has a beta; 0 keeps the others' keys sortable.
        key = (r["method"], k_label(r), r["ratio"],
               r["beta"] if r["method"] == "scalecom" else 0.0)
        acc[cell].setdefault(key, {}).setdefault(r["seed"], 100 * r["final_acc"])
        sent[cell].setdefault(key, {}).setdefault(r["seed"], r["bytes_per_worker"])
    head = ["data/model", "n", "ratio", "beta", "k policy", "accuracy (gap to dense)",
            "MB/worker", "vs ratio"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    by_ratio = k_label({})
    for cell in sorted(acc):
        dense = [v for k, seeds in acc[cell].items() if k[0] == "dense" for v in seeds.values()]
        rows.append("| " + " | ".join([cell[0], str(cell[1]), "-", "-", "dense",
                                       fmt(dense), "-", "-"]) + " |")
        keys = sorted((k for k in acc[cell] if k[0] != "dense"),
                      key=lambda k: (-k[2], k[0] != "scalecom", k[3], k[1] != by_ratio, k[1]))
        for method, label, ratio, beta in keys:
            base = sent[cell].get((method, by_ratio, ratio, beta))
            mean = np.mean(list(sent[cell][(method, label, ratio, beta)].values()))
            relative = f"{mean / np.mean(list(base.values())):.2f}x" if base else "-"
            rows.append("| " + " | ".join([
                cell[0], str(cell[1]), f"1/{round(1 / ratio)}",
                f"{beta:g}" if method == "scalecom" else "-",
                label if method == "scalecom" else f"top-k allgather, {label}",
                fmt(list(acc[cell][(method, label, ratio, beta)].values()), dense),
                f"{mean / 1e6:.2f}", relative]) + " |")
    return "\n".join(rows)


def groups(runs: list[dict]) -> dict:
    """(data/model, regime, n) -> {(variant, ratio): [accuracy per seed]};
    a seed run twice counts once (the first)."""
    out: dict = defaultdict(lambda: defaultdict(list))
    seen = set()
    for r in runs:
        cell = (f"{r['task']}/{r.get('model', 'mlp')}", r.get("tag") or r["regime"], r["ranks"])
        key = (cell, variant(r), r["ratio"], r["seed"])
        if key not in seen:
            seen.add(key)
            out[cell][(variant(r), r["ratio"])].append(100 * r["final_acc"])
    return out


def table(runs: list[dict]) -> str:
    cells = groups(runs)
    variants = sorted({v for c in cells.values() for v, _ in c if v != "dense"})
    head = ["data/model", "regime", "n", "ratio", "dense"] + variants
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (task, regime, n), acc in sorted(cells.items()):
        dense = acc.get(("dense", 1.0), [])
        for ratio in sorted({r for _, r in acc if r < 1}, reverse=True):
            row = [task, regime, str(n), f"1/{round(1 / ratio)}", fmt(dense)]
            row += [fmt(acc.get((v, ratio), []), dense) for v in variants]
            rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def gap_table(runs: list[dict]) -> str:
    """Per regime (tag): a row per variant, a column per data/model, n and
    ratio, each the gap of the seeds' mean accuracy to dense's, in points."""
    cells = groups(runs)
    out = []
    for regime in sorted({c[1] for c in cells}):
        columns = [(task, n, ratio) for (task, reg, n), acc in sorted(cells.items())
                   if reg == regime and ("dense", 1.0) in acc
                   for ratio in sorted({r for _, r in acc if r < 1}, reverse=True)]
        variants = sorted({v for (t, reg, n), acc in cells.items() if reg == regime
                           for v, r in acc if v != "dense"})
        head = [f"{regime}: variant"] + [f"{t} n={n} 1/{round(1 / r)}" for t, n, r in columns]
        rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for v in variants:
            row = [v]
            for t, n, r in columns:
                acc = cells[(t, regime, n)]
                values = acc.get((v, r))
                row.append(f"{np.mean(values) - np.mean(acc[('dense', 1.0)]):+.1f}"
                           if values else "-")
            rows.append("| " + " | ".join(row) + " |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


ALLOWED = {0.01: 0.5, 0.0025: 1.0}    # points below dense a ratio may lose (docs/convergence.md)


def targets_table(runs: list[dict], default: str) -> str:
    """Each cell's gap for the ``default`` variant against what its ratio is
    allowed; cells where dense itself stayed below 50% are marked."""
    cells = groups(runs)
    head = ["data/model", "regime", "n", "ratio", "dense", f"{default}: gap", "allowed", "verdict"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (task, regime, n), acc in sorted(cells.items()):
        dense = acc.get(("dense", 1.0))
        for ratio in sorted({r for _, r in acc if r < 1}, reverse=True):
            if not dense:
                continue
            if (default, ratio) not in acc:
                rows.append("| " + " | ".join([task, regime, str(n), f"1/{round(1 / ratio)}",
                                               f"{np.mean(dense):.1f}", "not run", "-", "-"])
                            + " |")
                continue
            # Judged on the gap as printed, to a tenth of a point.
            gap = round(float(np.mean(acc[(default, ratio)]) - np.mean(dense)), 1)
            allowed = ALLOWED.get(ratio)
            if np.mean(dense) < 50:
                verdict = "dense did not train"
            elif allowed is None:
                verdict = "-"
            else:
                verdict = "met" if gap >= -allowed else f"missed by {-gap - allowed:.1f}"
            rows.append("| " + " | ".join([task, regime, str(n), f"1/{round(1 / ratio)}",
                                           f"{np.mean(dense):.1f}", f"{gap:+.1f}",
                                           "-" if allowed is None else f"-{allowed:g}",
                                           verdict]) + " |")
    return "\n".join(rows)


def figures_table(runs: list[dict], regime: str = "normal") -> str:
    """The diagnostics of benchmarks/diagnostics.py on each run's largest
    tensor, mean over seeds, for one regime: the whole run / its last quarter."""
    keys = ("overlap_own", "overlap_mean", "captured", "memory_ratio", "lag")
    cells: dict = defaultdict(list)
    for r in runs:
        fig = (r.get("figures") or {}).get(r.get("largest"))
        if fig and (r.get("tag") or r["regime"]) == regime:
            cells[(f"{r['task']}/{r.get('model', 'mlp')}", r["ranks"], r["ratio"],
                   variant(r))].append(fig)
    head = ["data/model", "n", "ratio", "variant"] + list(keys)
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (task, n, ratio, v), figs in sorted(cells.items()):
        row = [task, str(n), f"1/{round(1 / ratio)}", v] + [
            f"{np.mean([f[k] for f in figs]):.2f} / {np.mean([f[k + '_late'] for f in figs]):.2f}"
            for k in keys]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def fmt(values: list[float], dense: list[float] | None = None) -> str:
    if not values:
        return "-"
    # The sample sd over seeds, and how many seeds: one seed has no spread.
    spread = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    text = f"{np.mean(values):.1f}{spread} [{len(values)}]"
    if dense:
        text += f" ({np.mean(values) - np.mean(dense):+.1f})"
    return text


def plot(runs: list[dict], out: str) -> None:
    plt = pyplot()
    cells = groups(runs)
    tasks = sorted({t for t, _, _ in cells})
    ratios = sorted({r for c in cells.values() for _, r in c if r < 1}, reverse=True)
    # One colour per variant and one line style per regime, the same in every panel.
    variants = sorted({v for c in cells.values() for v, r in c if r < 1})
    regimes = sorted({reg for _, reg, _ in cells})
    colour = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    style = {reg: ("-", "--", ":", "-.")[i % 4] for i, reg in enumerate(regimes)}
    fig, axes = plt.subplots(len(tasks), len(ratios), figsize=(5 * len(ratios), 3.3 * len(tasks)),
                             squeeze=False)
    for i, task in enumerate(tasks):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            lines = defaultdict(dict)
            for (t, regime, n), acc in cells.items():
                dense = acc.get(("dense", 1.0))
                for (v, r), values in acc.items():
                    if t == task and r == ratio and dense:
                        lines[(v, regime)][n] = np.mean(values) - np.mean(dense)
            for (v, regime), points in sorted(lines.items()):
                ns = sorted(points)
                ax.plot(ns, [points[n] for n in ns], marker="o", color=colour[v],
                        ls=style[regime])
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{task}, ratio 1/{round(1 / ratio)}", fontsize=10)
            ax.set_xlabel("workers n")
            ax.set_ylabel("accuracy - dense (points)")
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[v], marker="o", ls="") for v in variants]
    handles += [plt.Line2D([], [], color="gray", ls=style[reg]) for reg in regimes]
    fig.legend(handles, variants + [f"regime: {reg}" for reg in regimes], loc="lower center",
               ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(f"{out}_gap.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", help="write OUT_gap.png")
    parser.add_argument("--gaps", action="store_true",
                        help="print the gaps to dense instead: a row per variant, per regime")
    parser.add_argument("--targets", metavar="VARIANT",
                        help='print each cell against the targets for VARIANT '
                             '(e.g. "beta 0.5, clip 2")')
    parser.add_argument("--k-table", action="store_true",
                        help="print the per-layer k policies side by side, with their bytes")
    parser.add_argument("--figures", action="store_true",
                        help="also print the diagnostics of the normal regime's runs")
    args = parser.parse_args()
    runs = []
    for path in args.files:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, list):      # other JSON beside the runs (a both-ways check) is skipped
            runs.extend(data)
    if args.k_table:
        print(k_table(runs))
    else:
        print(gap_table(runs) if args.gaps else table(runs))
    if args.targets:
        print()
        print(targets_table(runs, args.targets))
    if args.figures:
        print()
        print(figures_table(runs))
    if args.out:
        plot(runs, args.out)


if __name__ == "__main__":
    main()
