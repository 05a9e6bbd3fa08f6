"""Shared by the Horovod Elastic workers (elastic_torch.py, elastic_tf.py).

usage: elastic_{torch,tf}.py OUTDIR [--mode dense|scalecom]
       [--scenario none|grow|shrink|kill] [--start-np N] ...

The training: scikit-learn's 8x8 digits (shipped with the package, no
download), shuffled once (fixed seed), standardised, the first 1500 images for training
and the other 297 for the test; an MLP 64 -> 256 -> 10 (its 16384-element first weight is
compressed by ScaleCom, min_numel 1024), SGD lr = 0.05 x hvd.size(), momentum
0.9, 300 global batches of 32 images per rank, a commit every 10 batches.

At global batch b, in a world of n ranks, rank r trains on its own slice of a
permutation drawn from (SEED, b): the run is deterministic given the world,
whichever process happens to hold rank r.

The elastic events (the discovery script, tests/elastic_hosts.sh, prints
``hosts.before`` until ``trigger`` exists in $SCALECOM_ELASTIC_DIR, then
``hosts.after``):

- ``grow`` / ``shrink``: at the commit after batch TRIGGER_AT, in the starting
  world, rank 0 writes the trigger and every rank then keeps calling
  ``state.check_host_updates()`` (a collective: the ranks raise together)
  until Horovod tells them the hosts changed; the world changes exactly there.
- ``kill``: the worker on host 127.0.0.1 writes the trigger and kills itself
  at the start of batch KILL_AT (between two commits); the others fail in the
  collective, restore the last commit and go on without it.

Results: every rank that finishes writes ``rank{r}.npz`` by its final rank
(``param/<name>`` flattened, ``world_size``, ``accuracy``, ``resets``,
``batches``); rank 0 also ``result.json``. Every process appends what happens
to it to ``events-{pid}.log``; an exception goes to ``error-{pid}.err``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

N_TRAIN = 1500
BATCH = 32             # per rank
TOTAL = 300            # global batches
COMMIT_EVERY = 10
LR = 0.05              # per rank, x hvd.size()
MOMENTUM = 0.9
HIDDEN = 256
SEED = 1234
RATIO = 0.01
MIN_NUMEL = 1024
VICTIM_HOST = "127.0.0.1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    # unheld: ScaleCom with Horovod's own State, which ScaleCom must refuse
    p.add_argument("--mode", choices=("dense", "scalecom", "unheld"), default="dense")
    p.add_argument("--scenario", choices=("none", "grow", "shrink", "kill"), default="none")
    p.add_argument("--start-np", type=int, default=2,
                   help="the world the job starts with (grow/shrink wait in it)")
    p.add_argument("--trigger-at", type=int, default=60, help="grow/shrink: at this commit")
    p.add_argument("--kill-at", type=int, default=75, help="kill: at the start of this batch")
    p.add_argument("--wait", type=float, default=60.0,
                   help="grow/shrink: seconds to wait for Horovod to report the new hosts")
    p.add_argument("--total", type=int, default=TOTAL)
    p.add_argument("--seed", type=int, default=SEED, help="the batches' order (not the split)")
    args = p.parse_args(argv)
    args.outdir = Path(args.outdir)
    args.state_dir = Path(os.environ.get("SCALECOM_ELASTIC_DIR", args.outdir))
    return args


def digits():
    """(x_train, y_train, x_test, y_test): float32 standardised by the train set, int64."""
    from sklearn.datasets import load_digits
    data = load_digits()
    # A fixed shuffle first: the file's last images (other writers) are harder.
    order = np.random.default_rng(SEED).permutation(len(data.target))
    x = data.data[order].astype(np.float64)
    y = data.target[order].astype(np.int64)
    mean = x[:N_TRAIN].mean(0)
    std = x[:N_TRAIN].std(0)
    std[std == 0] = 1.0
    x = ((x - mean) / std).astype(np.float32)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def batch_indices(batch: int, size: int, rank: int, seed: int = SEED) -> np.ndarray:
    """This rank's training indices at global batch `batch` in a world of `size`."""
    order = np.random.default_rng([seed, batch]).permutation(N_TRAIN)
    return order[:BATCH * size][rank * BATCH:(rank + 1) * BATCH]


def trigger_path(args) -> Path:
    return args.state_dir / "trigger"


def write_trigger(args, why: str) -> None:
    path = trigger_path(args)
    if not path.exists():
        tmp = path.with_name(f"trigger.{os.getpid()}.tmp")
        tmp.write_text(f"{why} pid {os.getpid()} at {time.time():.3f}\n")
        os.replace(tmp, path)


def is_victim() -> bool:
    return os.environ.get("HOROVOD_HOSTNAME") == VICTIM_HOST


def die(args, log, batch: int) -> None:
    """The kill scenario's victim: trigger the new host list, then SIGKILL itself."""
    write_trigger(args, f"killed at batch {batch}")
    log(f"SIGKILL self at batch {batch}")
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)     # not reached


def should_wait_for_hosts(args, batch: int, size: int) -> bool:
    """grow/shrink: at the trigger commit, in the starting world, hold until the new hosts."""
    return (args.scenario in ("grow", "shrink") and batch == args.trigger_at
            and size == args.start_np)


def wait_for_hosts(args, state, rank: int, log) -> None:
    """Rank 0 writes the trigger; then every rank polls check_host_updates() (a
    collective: all raise HostsUpdatedInterrupt in the same round) until Horovod
    reports the new hosts. Fails if nothing comes within args.wait seconds."""
    if rank == 0:
        write_trigger(args, f"{args.scenario} at batch {args.trigger_at}")
        log(f"trigger written at batch {args.trigger_at}")
    rounds = int(args.wait / 0.1)
    for _ in range(rounds):
        time.sleep(0.1)
        state.check_host_updates()      # raises HostsUpdatedInterrupt on every rank together
    raise RuntimeError(f"no host update within {args.wait} s of the trigger")


class Events:
    """events-{pid}.log: one line per event of this process."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / f"events-{os.getpid()}.log"
        self.t0 = time.time()

    def __call__(self, message: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.time() - self.t0:7.2f} host={os.environ.get('HOROVOD_HOSTNAME')} "
                    f"{message}\n")


def write_result(args, rank: int, size: int, params: dict, accuracy: float, resets: int,
                 batches: int, extra: dict | None = None) -> None:
    arrays = {f"param/{name}": np.ascontiguousarray(value).reshape(-1)
              for name, value in params.items()}
    np.savez(args.outdir / f"rank{rank}.npz", world_size=np.int64(size),
             accuracy=np.float64(accuracy), resets=np.int64(resets),
             batches=np.int64(batches), **arrays)
    if rank == 0:
        summary = dict(accuracy=float(accuracy), resets=int(resets), world_size=int(size),
                       batches=int(batches), mode=args.mode, scenario=args.scenario)
        summary.update(extra or {})
        (args.outdir / "result.json").write_text(json.dumps(summary, indent=1) + "\n")


def run(main, args) -> None:
    """Run main(); on error write error-{pid}.err and exit 1."""
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - reported to the test, then re-raised
        (args.outdir / f"error-{os.getpid()}.err").write_text(
            f"host={os.environ.get('HOROVOD_HOSTNAME')} {type(exc).__name__}: {exc}\n"
            + traceback.format_exc())
        sys.stderr.write(f"[pid {os.getpid()}] {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(1)
