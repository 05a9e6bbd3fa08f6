"""Measure the step model's costs on this host, in under a minute.

    python -m horovod_scalecom.plan.calibrate --out my_host.json

One thread, as one rank of the benchmarks runs (``--threads`` to change):

* the package's own C++ kernels (torch.ops.scalecom, loaded without Horovod):
  select_topk (the leader), gather_update_ (every rank), scatter (the output),
  sum_squares (the relative clip's norm, on by default);
* torch: a float32 reduction and copy, fp16's casts and float16 reduction,
  PowerSGD's rank-4 step on one matrix, one pass m += beta * g;
* the fixed cost of the three kernels on a 1024-element tensor (per tensor);
* a TCP connection over loopback to a child process, its segments cut to
  --mss bytes (1448: a 1500-byte Ethernet MTU): CPU seconds of sender and
  receiver per byte, and the one-way latency of a 1-byte ping-pong.

Each figure is the median of --repeats runs after a warm-up. The file it
writes is what ``python -m horovod_scalecom.plan --constants`` reads; it
records the machine, torch's version and the load average before and after,
since a busy host inflates every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

from horovod_scalecom.plan.constants import Constants, save

TCP_BYTES = 256 << 20
CHUNK = 1 << 20
PINGS = 2000


def timeit(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn``, after one untimed
    warm-up call (page faults, the allocator); benchmarks.core_step times the
    same way."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernels(numel: int, ratio: float, repeats: int) -> dict[str, float]:
    """Per-element seconds of the kernels and torch passes, and per-tensor call cost."""
    import torch
    from horovod_scalecom.config import num_selected
    from horovod_scalecom.torch._ops import ops

    gen = torch.Generator().manual_seed(0)
    g = torch.randn(numel, generator=gen)
    m = torch.randn(numel, generator=gen) * 0.1
    k = num_selected(numel, ratio)
    idx = ops.select_topk(m, g, k)
    values = g[idx]
    a, b = g.clone(), m.clone()
    ah, bh = a.half(), b.half()
    per = {
        "select_s": timeit(lambda: ops.select_topk(m, g, k), repeats),
        "update_s": timeit(lambda: ops.gather_update_(m, g, idx, 0.1), repeats),
        "scatter_s": timeit(lambda: ops.scatter(idx, values, numel), repeats),
        "clip_s": timeit(lambda: ops.sum_squares(g), repeats),
        "reduce_s": timeit(lambda: a.add_(b), repeats),
        "copy_s": timeit(lambda: a.copy_(b), repeats),
        "half_s": timeit(lambda: b.half().float(), repeats),
        "half_reduce_s": timeit(lambda: ah.add_(bh), repeats),
        "pass_s": timeit(lambda: m.add_(g, alpha=0.1), repeats),
    }
    out = {key: value / numel for key, value in per.items()}
    out["powersgd_s"] = _powersgd(repeats)
    small = torch.randn(1024, generator=gen)
    small_m = torch.zeros(1024)
    small_k = num_selected(1024, ratio)

    def calls():
        i = ops.select_topk(small_m, small, small_k)
        vals, _ = ops.gather_update_(small_m, small, i, 0.1)
        ops.scatter(i, vals, 1024)
    out["call_s"] = timeit(lambda: [calls() for _ in range(100)], repeats) / 100
    return out


def _powersgd(repeats: int, rows: int = 1024, cols: int = 2304, rank: int = 4) -> float:
    """Per element: torch's powerSGD_hook's arithmetic on one matrix (error
    feedback, P = M Q, orthogonalise P, Q = M^T P, the approximation P Q^T)."""
    import torch
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(rows, cols, generator=gen)
    error = torch.zeros(rows, cols)
    q = torch.randn(cols, rank, generator=gen)

    def step():
        nonlocal q
        m = grad + error
        p = m @ q
        p = torch.linalg.qr(p).Q
        q = m.t() @ p
        error.copy_(m - p @ q.t())
    return timeit(step, repeats) / (rows * cols)


_RECEIVER = r"""
import os, socket, sys, time
s = socket.socket()
if int(sys.argv[4]):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, int(sys.argv[4]))
s.connect(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(int(sys.argv[2])):
    s.sendall(s.recv(1))
total, want, buf = 0, int(sys.argv[3]), bytearray(1 << 20)
start = time.process_time()
while total < want:
    got = s.recv_into(buf)
    if not got:
        break
    total += got
s.sendall(repr(time.process_time() - start).encode() + b"\n")
s.close()
"""


def loopback(mss: int = 1448) -> dict[str, float]:
    """TCP over loopback to a child process: one-way latency and CPU per byte
    (segments of ``mss`` bytes; 0: the loopback's own, 64 kB)."""
    server = socket.socket()
    if mss:
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(port), str(PINGS),
                              str(TCP_BYTES), str(mss)])
    try:
        server.settimeout(30)
        conn, _ = server.accept()
        conn.settimeout(30)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        for _ in range(PINGS):
            conn.sendall(b"x")
            conn.recv(1)
        latency = (time.perf_counter() - start) / PINGS / 2
        payload = bytes(CHUNK)
        cpu = time.process_time()
        wall = time.perf_counter()
        for _ in range(TCP_BYTES // CHUNK):
            conn.sendall(payload)
        receiver_cpu = float(conn.makefile().readline())
        wall = time.perf_counter() - wall
        sender_cpu = time.process_time() - cpu
        conn.close()
    finally:
        server.close()
        child.wait(timeout=30)
    return {"latency_s": latency, "tcp_s_per_byte": (sender_cpu + receiver_cpu) / TCP_BYTES,
            "tcp_bytes_per_s": TCP_BYTES / wall}


def calibrate(numel: int = 1 << 23, ratio: float = 0.01, repeats: int = 15,
              threads: int = 1, mss: int = 1448) -> Constants:
    """Constants measured on this host (see the module's docstring)."""
    import torch
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    costs = kernels(numel, ratio, repeats)
    net = loopback(mss)
    extra = {"load_before": load_before, "load_after": os.getloadavg(),
             "seconds": time.perf_counter() - started, "numel": numel, "threads": threads,
             "repeats": repeats,
             "machine": platform.machine(), "processor": platform.processor(),
             "torch": torch.__version__, "python": platform.python_version(),
             "tcp_bytes_per_s": net["tcp_bytes_per_s"], "mss": mss}
    return Constants(**costs, tcp_s_per_byte=net["tcp_s_per_byte"], latency_s=net["latency_s"],
                     cores=len(os.sched_getaffinity(0)), device="cpu", ratio=ratio,
                     source=f"python -m horovod_scalecom.plan.calibrate on {platform.node()}, "
                            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                     extra=extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--numel", type=int, default=1 << 23,
                        help="elements of the tensors timed (default 8M: beyond the caches)")
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one rank's)")
    parser.add_argument("--mss", type=int, default=1448,
                        help="TCP segment size of the loopback test (1448: a 1500-byte MTU; "
                             "0: the loopback's own)")
    args = parser.parse_args(argv)
    if args.numel < 1024:
        parser.error(f"--numel must be at least 1024, got {args.numel}")
    if not 0 < args.ratio <= 1:
        parser.error(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be positive")
    if args.mss and not 536 <= args.mss <= 65495:
        parser.error(f"--mss must be 0 or 536..65495, got {args.mss}")
    c = calibrate(args.numel, args.ratio, args.repeats, args.threads, args.mss)
    save(c, args.out)
    for key in ("select_s", "update_s", "scatter_s", "clip_s", "reduce_s", "copy_s", "half_s",
                "half_reduce_s", "powersgd_s", "pass_s"):
        print(f"{key:>14}: {getattr(c, key) * 1e9:8.3f} ns per element")
    print(f"{'call_s':>14}: {c.call_s * 1e6:8.1f} us per tensor")
    print(f"{'tcp_s_per_byte':>14}: {c.tcp_s_per_byte * 1e9:8.3f} ns CPU per byte "
          f"({c.extra['tcp_bytes_per_s'] / 1e9:.2f} GB/s over loopback)")
    print(f"{'latency_s':>14}: {c.latency_s * 1e6:8.1f} us one way")
    print(f"{'cores':>14}: {c.cores}")
    print(f"load average {c.extra['load_before'][0]:.2f} before, "
          f"{c.extra['load_after'][0]:.2f} after; {c.extra['seconds']:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
