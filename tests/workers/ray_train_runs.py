"""Driver: the Ray Train runs of tests/test_ray_train.py on one local Ray cluster.

usage: ray_train_runs.py OUTDIR RAY_TEMP_DIR

Starts a local Ray cluster (2 CPUs, its session files under RAY_TEMP_DIR),
runs examples/ray_train_ddp.py's TorchTrainer twice and writes
OUTDIR/<run>.json for each (the error, the final metrics, every checkpoint
with its metrics), the runs' storage under OUTDIR/store:

  killed   2 workers, STEPS steps, a checkpoint every EVERY steps, rank 1
           SIGKILLed before step KILL_AT (once); FailureConfig(max_failures=1)
  resized  1 worker under the name of ``killed``: Ray Train restores that
           run and hands its last checkpoint (2 workers') to the train
           function; max_failures=0

(A run without the kill would be one more worker group to start, some 15 s
here: the killed run's end is held to the NumPy reference of the
uninterrupted run instead.)

The test bounds this process in time and ends whatever Ray started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

STEPS, EVERY, KILL_AT, RATIO, LR, SEED = 12, 4, 6, 0.05, 0.05, 0
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ray_train_ddp.py"


def load_example():
    spec = importlib.util.spec_from_file_location("ray_train_ddp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(example, out: Path, name: str, run_name: str, workers: int, max_failures: int,
        **config) -> None:
    """One fit(); its outcome to out/<name>.json, whether it trained or failed."""
    store = out / "store"
    trainer = example.make_trainer(
        example.train_config(STEPS, EVERY, RATIO, LR, SEED, share_timeout=30.0,
                             kill_marker=str(store / f"{run_name}.killed"), **config),
        workers, str(store), run_name, max_failures=max_failures, timeout_s=30)
    record = {"error": None, "metrics": None, "checkpoints": []}
    began = time.monotonic()
    try:
        result = trainer.fit()
    except Exception as exc:   # noqa: BLE001 - the refusal is what the test reads
        record["error"] = f"{type(exc).__name__}: {exc}"
    else:
        record["metrics"] = result.metrics
        record["checkpoint"] = result.checkpoint.path
        record["checkpoints"] = [[c.path, m] for c, m in result.best_checkpoints]
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    print(f"run {name}: {'failed' if record['error'] else 'done'} in "
          f"{time.monotonic() - began:.1f} s", flush=True)


def main() -> None:
    out, temp = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    example = load_example()
    # Loaded from its file and kept out of sys.modules, the example travels
    # to the workers by value (cloudpickle), as a script's __main__ would.
    import ray

    # Every step reports, and a report waits until Ray Train's controller has
    # taken the previous one (it polls every 2 s by default). Ray Train's
    # preemption watcher and metrics would be two more processes to start on
    # a small machine, for nothing a local cluster uses.
    os.environ.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1",
                      RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0", RAY_TRAIN_METRICS_ENABLED="0")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp))
    try:
        run(example, out, "killed", "killed", 2, 1, kill_at_step=KILL_AT, kill_rank=1)
        run(example, out, "resized", "killed", 1, 0)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
