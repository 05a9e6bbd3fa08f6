"""The accuracy target of Horovod Elastic with ScaleCom, measured over seeds.

    .venv/bin/python tests/elastic_accuracy.py [--seeds 1 2 3 4] [--frameworks torch tf]

For each seed (the order of the batches; the data split and the model's
initial weights stay fixed), ScaleCom's run on an unchanged world of 2 and
its grow, shrink and kill runs (tests/test_elastic.py's jobs), then per
scenario the mean accuracy and the mean of (scenario - unchanged world) with
its spread. One run's accuracy moves by about a point from one batch order
to the next on this 297-image test set, so a 1-point target is a statement
about means, which this script measures; tests/test_elastic.py asserts the
looser bound that one run can be held to.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_elastic as te  # noqa: E402

SCENARIOS = ("none", "grow", "shrink", "kill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--frameworks", nargs="+", default=list(te.FRAMEWORKS))
    args = parser.parse_args()
    accuracy: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for framework in args.frameworks:
            for seed in args.seeds:
                for scenario in SCENARIOS:
                    where = Path(tmp) / f"{framework}-{scenario}-{seed}"
                    job = te.run_elastic(framework, "scalecom", scenario, where, seed=seed)
                    result = te.check_world(job, te.SCENARIOS[scenario][3])[0]
                    value = float(result["accuracy"])
                    accuracy.setdefault((framework, scenario), []).append(value)
                    print(f"{framework} seed {seed} {scenario}: accuracy {value:.4f} "
                          f"({job.seconds:.0f} s)", flush=True)
    print("\n| framework | scenario | mean accuracy | mean of (scenario - unchanged) | "
          "min, max of it | seeds |")
    print("|---|---|---|---|---|---|")
    for framework in args.frameworks:
        fixed = accuracy[(framework, "none")]
        for scenario in SCENARIOS:
            values = accuracy[(framework, scenario)]
            diffs = [100 * (a - b) for a, b in zip(values, fixed)]
            print(f"| {framework} | {scenario} | {statistics.mean(values):.4f} | "
                  f"{statistics.mean(diffs):+.2f} pt | {min(diffs):+.2f}, {max(diffs):+.2f} | "
                  f"{len(values)} |")


if __name__ == "__main__":
    main()
