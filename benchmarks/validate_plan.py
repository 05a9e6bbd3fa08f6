"""The model's prediction beside every measured cell of the network benchmark.

    python -m benchmarks.validate_plan --constants docs/data/plan/calibration.json

Reads the benchmark's JSON (docs/data/network_*.json, docs/data/overlap/,
docs/data/ddp/) and predicts each row with that run's own setting: all n
ranks on this one host (ranks_per_host = n, sharing its cores and TCP
stack), the run's line rate, its ratio and group size, PowerSGD in one
bucket (as the benchmark runs it), and the backward time the run measured
alone for that row. Prints a Markdown table: predicted and measured median
step, and the error. Nothing here is fitted to the measured steps.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Iterable

from horovod_scalecom.plan.constants import Constants, load
from horovod_scalecom.plan.model import METHODS, Cluster, Settings, predict
from horovod_scalecom.plan.workload import model_shapes

DATA = ("docs/data/overlap/network_*.json", "docs/data/network_*.json", "docs/data/ddp/*.json")
RATES = {"1gbit": 1.0, "10gbit": 10.0}


def cells(paths: Iterable[str], c: Constants) -> list[dict]:
    """One row per measured (file, method) the model covers, with its prediction."""
    out = []
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        gbit = run.get("line_rate_gbit") or RATES[run["label"]]
        n = run["ranks"]
        settings = Settings(ratio=run["ratio"], hook_ratio=run.get("hook_ratio"),
                            bucket_cap_mb=run.get("bucket_cap_mb") or Settings().bucket_cap_mb,
                            powersgd_bucket_mb=None)
        shapes = model_shapes(run["model"])
        for row in run["rows"]:
            method = row["method"]
            if method not in METHODS:
                continue
            cluster = Cluster(workers=n, gbit=gbit, backward_s=row["backward_s"],
                              ranks_per_host=n)
            p = predict(method, shapes, cluster, c, settings)
            out.append({"file": path, "model": run["model"], "gbit": gbit, "n": n,
                        "method": method, "measured_s": row["step_s"],
                        "predicted_s": p.step_s, "backward_s": row["backward_s"],
                        "error": p.step_s / row["step_s"] - 1,
                        "bytes_model": p.bytes_per_rank, "bytes_run": row["bytes_per_rank"]})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| data | model | rate | n | method | backward ms | predicted ms | measured ms "
             "| error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **(>25%)**" if abs(r["error"]) > 0.25 else ""
        lines.append(f"| {os.path.relpath(r['file'], 'docs/data')} | {r['model']} | "
                     f"{r['gbit']:g} Gbit/s | {r['n']} | {r['method']} | "
                     f"{1e3 * r['backward_s']:.1f} | {1e3 * r['predicted_s']:.1f} | "
                     f"{1e3 * r['measured_s']:.1f} | {100 * r['error']:+.0f}%{flag} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constants", required=True, help="a calibration file")
    parser.add_argument("--data", nargs="+", default=list(DATA),
                        help="the benchmark's JSON files (globs)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    try:
        c = load(args.constants)
    except ValueError as exc:
        parser.error(str(exc))
    paths = [p for pattern in args.data for p in sorted(glob.glob(pattern))]
    if not paths:
        parser.error(f"--data: no file matches {args.data}")
    rows = cells(paths, c)
    print(table(rows))
    within = sum(abs(r["error"]) <= 0.25 for r in rows)
    print(f"\n{within} of {len(rows)} cells within 25% of the measured median")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
