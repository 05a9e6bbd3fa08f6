"""Predict each method's training step on a cluster before booking it.

    python -m horovod_scalecom.plan --model resnet50 --workers 64 --gbit 25 --backward-ms 30

Prints each method's predicted step and speedup over dense and its parts
(compute, wire, the TCP stack, latency, and "host ms", the bound set by the
ranks of a host sharing its cores), the ratio it
recommends and the bandwidth below which ScaleCom pays. The costs come from
--constants (a file written by ``python -m horovod_scalecom.plan.calibrate``)
or, without it, from a calibration run now on this host (a few seconds);
--constant NAME=VALUE overrides one. With --device gpu (the default) the
compression's costs are projected from this host's onto a GPU's memory
bandwidth (--hbm-tbps): a projection, not a measurement. The model and what
it leaves out: docs/benchmarks.md, "Predicting a step on your cluster".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from horovod_scalecom.plan import decide
from horovod_scalecom.plan.constants import Constants, gpu_projection, load
from horovod_scalecom.plan.model import (DENSE, METHODS, SCALECOM_METHODS, Cluster, Settings,
                                         predict_all)
from horovod_scalecom.plan.workload import MODELS, load_shapes, model_shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m horovod_scalecom.plan",
                                     description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=f"a named model: {', '.join(sorted(MODELS))}")
    which.add_argument("--shapes", help="your model's shapes: a JSON list of tensor sizes or "
                                        "shapes, or a torch-saved state_dict")
    parser.add_argument("--workers", type=int, required=True, help="n, the ranks (GPUs)")
    parser.add_argument("--gbit", type=float, required=True,
                        help="each rank's link, Gbit/s (full duplex)")
    parser.add_argument("--backward-ms", type=float, required=True,
                        help="one rank's backward pass, ms")
    parser.add_argument("--latency-us", type=float,
                        help="one message's one-way latency (default: the constants')")
    parser.add_argument("--ranks-per-host", type=int, default=1,
                        help="ranks sharing one host's cores and TCP stack")
    parser.add_argument("--cores", type=int,
                        help="cores of each host (default: the constants', this host's)")
    parser.add_argument("--rdma", action="store_true",
                        help="the network bypasses the host's TCP stack (RDMA, GPUDirect)")
    parser.add_argument("--wire-efficiency", type=float, default=1448 / 1538,
                        help="payload per byte on the wire (default: TCP over 1500-byte "
                             "Ethernet)")
    parser.add_argument("--ratio", type=float, default=0.01, help="ScaleCom's ratio")
    parser.add_argument("--hook-ratio", type=float, help="the DDP hook's ratio (default: --ratio)")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0,
                        help="the ring's groups and DDP's buckets")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--constants", help="a calibration file (default: calibrate now)")
    parser.add_argument("--constant", action="append", default=[], metavar="NAME=VALUE",
                        help="override one constant, e.g. select_s=2e-9 (repeatable)")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                        help="where backward and the compression run")
    parser.add_argument("--hbm-tbps", type=float, default=3.35,
                        help="the GPU's memory bandwidth, TB/s (default: H100 SXM)")
    parser.add_argument("--json", help="also write the predictions to this file")
    return parser.parse_args(argv)


def constants(args: argparse.Namespace) -> Constants:
    if args.constants:
        c = load(args.constants)
    else:
        from horovod_scalecom.plan.calibrate import calibrate
        print("# no --constants: calibrating on this host ...", flush=True)
        c = calibrate()
    for item in args.constant:
        name, _, value = item.partition("=")
        fields = {f.name: f for f in dataclasses.fields(Constants)}
        if name not in fields or name in ("source", "extra", "device"):
            raise ValueError(f"--constant: unknown constant {name!r}")
        try:
            c = c.replace(**{name: (int if name == "cores" else float)(value)})
        except ValueError:
            raise ValueError(f"--constant {name}: {value!r} is not a number") from None
    if args.cores is not None:
        if args.cores < 1:
            raise ValueError(f"--cores must be a positive integer, got {args.cores}")
        c = c.replace(cores=args.cores)
    if args.device == "gpu" and c.device == "cpu":
        if not args.hbm_tbps > 0:
            raise ValueError(f"--hbm-tbps must be positive, got {args.hbm_tbps}")
        c = gpu_projection(c, args.hbm_tbps * 1e12)
    return c


def plan(args: argparse.Namespace) -> dict:
    shapes = load_shapes(args.shapes) if args.shapes else model_shapes(args.model)
    if args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {args.workers}")
    cluster = Cluster(workers=args.workers, gbit=args.gbit, backward_s=args.backward_ms / 1e3,
                      ranks_per_host=args.ranks_per_host,
                      latency_s=None if args.latency_us is None else args.latency_us / 1e6,
                      wire_efficiency=args.wire_efficiency, tcp=not args.rdma)
    settings = Settings(ratio=args.ratio, hook_ratio=args.hook_ratio,
                        bucket_cap_mb=args.bucket_cap_mb)
    c = constants(args)
    methods = list(dict.fromkeys([DENSE, *args.methods]))
    preds = predict_all(shapes, cluster, c, settings, methods)
    dense = preds[DENSE].step_s
    ours = [m for m in methods if m in SCALECOM_METHODS]
    best = min(ours, key=lambda m: preds[m].step_s) if ours else None
    result = {"shapes": len(shapes), "parameters": sum(math.prod(s) for s in shapes),
              "cluster": dataclasses.asdict(cluster), "constants": c.source,
              "device": c.device, "predictions": {m: dataclasses.asdict(p) | {
                  "speedup": dense / p.step_s} for m, p in preds.items()},
              "best": best}
    if best:
        result["break_even_gbit"] = {m: decide.break_even_gbit(m, shapes, cluster, c, settings)
                                     for m in ours}
        result["recommended_ratio"] = decide.recommended_ratio(best, shapes, cluster, c,
                                                               settings)
    return result


def show(args: argparse.Namespace, r: dict) -> None:
    cl = r["cluster"]
    print(f"# {args.model or args.shapes}: {r['shapes']} tensors, {r['parameters']:,} "
          f"parameters; n = {cl['workers']}, {cl['gbit']:g} Gbit/s "
          f"({'RDMA' if not cl['tcp'] else 'TCP'}), backward {1e3 * cl['backward_s']:.1f} ms, "
          f"ratio {args.ratio}")
    print(f"# constants ({r['device']}): {r['constants']}")
    print(f"{'method':>14} {'step ms':>9} {'speedup':>8} {'compute ms':>10} {'wire ms':>9} "
          f"{'tcp ms':>8} {'latency ms':>10} {'host ms':>8} {'MB/rank':>9}")
    for m, p in r["predictions"].items():
        print(f"{m:>14} {1e3 * p['step_s']:>9.1f} {p['speedup']:>7.2f}x "
              f"{1e3 * p['compute_s']:>10.1f} {1e3 * p['wire_s']:>9.1f} {1e3 * p['tcp_s']:>8.1f} "
              f"{1e3 * p['latency_s']:>10.2f} {1e3 * p['shared_s']:>8.1f} "
              f"{p['bytes_per_rank'] / 1e6:>9.3f}")
    if not r["best"]:
        return
    best = r["best"]
    print(f"fastest ScaleCom exchange: {best}, {r['predictions'][best]['speedup']:.2f}x dense; "
          f"recommended ratio {r['recommended_ratio']:g} (the least compression within 5% "
          f"of its fastest step)")
    for m, gbit in r["break_even_gbit"].items():
        if gbit is None:
            print(f"{m}: slower than dense at every bandwidth from "
                  f"{decide.LOWEST_GBIT:g} Gbit/s up")
        elif math.isinf(gbit):
            print(f"{m}: faster than dense at every bandwidth up to {decide.HIGHEST_GBIT:g} Gbit/s")
        else:
            print(f"{m}: pays below {gbit:.3g} Gbit/s (equal to dense there)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        result = plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    show(args, result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
