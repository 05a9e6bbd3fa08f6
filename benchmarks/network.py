"""Run the exchange benchmark on a bandwidth-limited network it builds and removes.

    python -m benchmarks.network --ranks 2 4 8 --rate 1gbit 10gbit \\
        --model resnet50 --out docs/data/network

Needs root, iproute2 and tc (Linux). For each rate and n it builds a small
cluster of network namespaces: a hub namespace with a bridge, and per rank
a namespace whose only link is a veth pair to that bridge, shaped by tc to
the rate in both directions (a full-duplex NIC; optional netem delay). Open
MPI runs in the hub, each rank in its own namespace, forced onto TCP over
the 10.77.0.0/24 links only; PowerSGD's gloo group uses rank 0's address.
Then it runs ``benchmarks.exchange`` there and writes OUT_<model>_<rate>_n<N>.json.

Everything is removed afterwards, also when a run fails, times out or the
command is interrupted; namespaces left by an earlier crash (the hsc- prefix)
are removed before building. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PREFIX = "hsc"
SUBNET = "10.77.0"


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, **kw)


def teardown() -> None:
    """Remove every namespace of ours; their veth pairs go with them."""
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        if name.startswith(f"{PREFIX}-"):
            sh("ip", "netns", "del", name, check=False)


def shape(ns: str, dev: str, rate: str, delay: str | None) -> None:
    tbf = ["tbf", "rate", rate, "burst", "512kb", "latency", "50ms"]
    if delay:
        in_ns(ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
              "delay", delay)
        in_ns(ns, "tc", "qdisc", "add", "dev", dev, "parent", "1:", "handle", "2:", *tbf)
    else:
        in_ns(ns, "tc", "qdisc", "add", "dev", dev, "root", *tbf)


def gbit_per_s(rate: str) -> float:
    """A tc rate such as 1gbit, 10gbit or 500mbit, in Gbit/s (the bound's line rate)."""
    units = {"gbit": 1.0, "mbit": 1e-3, "kbit": 1e-6}
    for unit, scale in units.items():
        if rate.lower().endswith(unit):
            return float(rate[:-len(unit)]) * scale
    raise ValueError(f"rate {rate!r}: expected a number followed by gbit, mbit or kbit")


def build(ranks: int, rate: str, delay: str | None) -> None:
    hub = f"{PREFIX}-hub"
    sh("ip", "netns", "add", hub)
    in_ns(hub, "ip", "link", "add", "br0", "type", "bridge")
    in_ns(hub, "ip", "addr", "add", f"{SUBNET}.254/24", "dev", "br0")
    in_ns(hub, "ip", "link", "set", "br0", "up")
    in_ns(hub, "ip", "link", "set", "lo", "up")
    for i in range(ranks):
        ns, v, h = f"{PREFIX}-r{i}", f"{PREFIX}v{i}", f"{PREFIX}h{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", v, "type", "veth", "peer", "name", h)
        sh("ip", "link", "set", v, "netns", ns)
        sh("ip", "link", "set", h, "netns", hub)
        in_ns(hub, "ip", "link", "set", h, "master", "br0")
        in_ns(hub, "ip", "link", "set", h, "up")
        in_ns(ns, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", v)
        in_ns(ns, "ip", "link", "set", v, "up")
        in_ns(ns, "ip", "link", "set", "lo", "up")
        shape(ns, v, rate, delay)        # what the rank sends
        shape(hub, h, rate, delay)       # what the rank receives


def run_exchange(ranks: int, workdir: Path, exchange_args: list[str], out: Path,
                 timeout: float) -> int:
    wrapper = workdir / "in_rank_ns.sh"
    wrapper.write_text("#!/bin/sh\n"
                       f"export GLOO_SOCKET_IFNAME={PREFIX}v$OMPI_COMM_WORLD_RANK\n"
                       f'exec ip netns exec {PREFIX}-r$OMPI_COMM_WORLD_RANK "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PMIX_MCA_ptl_tcp_if_include=f"{SUBNET}.0/24",
               SCALECOM_BENCH_MASTER=f"{SUBNET}.1:29517", OMP_NUM_THREADS="1")
    cmd = ["ip", "netns", "exec", f"{PREFIX}-hub", "mpirun", "--allow-run-as-root",
           "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
           "--mca", "btl", "tcp,self", "--mca", "pml", "ob1",
           "--mca", "btl_tcp_if_include", f"{SUBNET}.0/24",
           "--mca", "oob_tcp_if_include", f"{SUBNET}.0/24",
           "-x", "PMIX_MCA_ptl_tcp_if_include", "-x", "SCALECOM_BENCH_MASTER",
           "-x", "OMP_NUM_THREADS", "-x", "PATH", "-x", "PYTHONPATH",
           str(wrapper), sys.executable, "-m", "benchmarks.exchange",
           *exchange_args, "--json", str(out)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"[network] n={ranks}: no result within {timeout:.0f} s, killed", flush=True)
        return 124


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other flag goes to each run of benchmarks.exchange "
               "(python -m benchmarks.exchange --help lists them).")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rate", nargs="+", default=["1gbit"], help="tc rates, e.g. 1gbit")
    parser.add_argument("--delay", help="netem delay per link direction, e.g. 100us")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--out", default="network", help="prefix of the JSON files")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    args, exchange_args = parser.parse_known_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks.network needs root (it creates network namespaces)")
    for tool in ("ip", "tc", "mpirun"):
        if shutil.which(tool) is None:
            sys.exit(f"benchmarks.network needs `{tool}` on PATH")

    def interrupted(signum, frame):
        teardown()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rate in args.rate:
            for ranks in args.ranks:
                out = Path(f"{args.out}_{args.model}_{rate}_n{ranks}.json").resolve()
                out.parent.mkdir(parents=True, exist_ok=True)
                print(f"[network] {rate}{' +' + args.delay if args.delay else ''}, n={ranks}: "
                      "building the namespaces", flush=True)
                teardown()
                try:
                    build(ranks, rate, args.delay)
                    label = f"{rate}" + (f" delay {args.delay}" if args.delay else "")
                    code = run_exchange(ranks, Path(tmp),
                                        ["--model", args.model, "--label", label,
                                         "--line-rate", str(gbit_per_s(rate)), *exchange_args],
                                        out, args.timeout)
                    failed += code != 0
                finally:
                    teardown()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
