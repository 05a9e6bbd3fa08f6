"""One training step of each method, predicted from shapes, a network and costs.

A rank's step is backward followed (or overlapped, see below) by the
exchange of its gradient groups, one after the other. Each group costs

    compute  = the per-element costs of what the method runs on the group
    network  = max(wire, tcp) + messages * latency
    wire     = bytes / (link bandwidth * wire_efficiency)
    tcp      = min(1, h) * bytes * tcp_s_per_byte    (the host's TCP stack; 0 on RDMA)

where bytes are the byte model of docs/algorithm.md (horovod_scalecom.
bytes_model), messages the sequential latencies of the method's collectives
(a flat ring allreduce: 2 (n - 1) hops) and h = ranks_per_host / cores (the
kernel's stack spreads over the host's spare cores). The ranks of one host
also share its cores, so the step is at least

    shared   = [backward] + h * (sum of compute [on a CPU] + sum of tcp work)

(the bracketed terms where backward and the compression run on the CPU):
ranks on two cores each with a core's worth of work take twice as long. The
step is the larger of the two. Per method, per group of E elements (E_c in
tensors of at least min_numel elements, which are compressed; the rest is
sent dense):

* dense: reduce E (n-1)/n + copy 2E (Horovod's fusion buffer in and out);
  64 MB fusion groups, 2 (n-1) messages each.
* fp16: cast E + half-reduce E (n-1)/n + copy E; bytes halved.
* PowerSGD (rank 4): powersgd_s per element and call_s per compressed
  matrix (the hook's min_compression_rate 2), the rest dense; P then Q:
  4 (n-1) messages per bucket, plus 2 (n-1) for the dense rest.
* all three ScaleCom exchanges: the relative clip's norm (on by default)
  and the memory update of E_c, call_s per compressed tensor;
* scalecom (the Horovod path): the selection of all E_c (each tensor's
  followers wait for its leader's indices before the next tensor, so the
  leaders' selections add up along the step even when staggered), the
  dense output of E_c, the allreduce of the k values; one index message
  per tensor plus 2 (n-1) per fusion group.
* scalecom ring: selection of E_c / n (chunk-wise owners, balanced), the
  mean written in the memory update's pass (a copy's cost); per 25 MB
  group 2 (n-1) hops plus a 2 log2 n agreement allreduce.
* ddp hook: as the Horovod path (one leader selects the whole bucket), one
  broadcast (log2 n) + 2 (n-1) messages per bucket.

Overlap: where the exchange has a processor of its own (a GPU, or a CPU host
with more cores than ranks) group i may start once backward has produced it
(backward is taken to produce elements at an even rate, last parameter
first); groups run one after the other. Where the ranks' cores are all busy
with backward, nothing overlaps: step = backward + the sum of the groups.
What it leaves out is listed in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from horovod_scalecom import bytes_model
from horovod_scalecom.ring_buckets import DEFAULT_BUCKET_CAP_MB, bucket_by_size
from horovod_scalecom.config import DEFAULTS, num_selected
from horovod_scalecom.plan.constants import Constants

DENSE, FP16, POWERSGD = "dense", "fp16", "powersgd"
SCALECOM, RING, HOOK = "scalecom", "scalecom ring", "ddp hook"
METHODS = (DENSE, FP16, POWERSGD, SCALECOM, RING, HOOK)
SCALECOM_METHODS = (SCALECOM, RING, HOOK)

#: TCP payload per byte on the wire: 1448 of a 1500-byte IP packet (TCP
#: timestamps) and 38 bytes of Ethernet framing, preamble and gap.
TCP_ETHERNET = 1448 / 1538
#: Horovod's default HOROVOD_FUSION_THRESHOLD.
HOROVOD_FUSION_MB = 64.0


@dataclass(frozen=True)
class Cluster:
    """The network and the ranks: ``gbit`` is each rank's link (full duplex)."""

    workers: int
    gbit: float
    backward_s: float
    ranks_per_host: int = 1
    latency_s: float | None = None          # None: the constants' latency
    wire_efficiency: float = TCP_ETHERNET
    tcp: bool = True                        # False: RDMA / GPUDirect, no host stack per byte

    def __post_init__(self) -> None:
        if not (isinstance(self.workers, int) and self.workers >= 1):
            raise ValueError(f"--workers must be a positive integer, got {self.workers!r}")
        if not self.gbit > 0:
            raise ValueError(f"--gbit must be positive, got {self.gbit!r}")
        if not self.backward_s >= 0:
            raise ValueError(f"--backward-ms must be non-negative, got {self.backward_s * 1e3!r}")
        if not (isinstance(self.ranks_per_host, int) and self.ranks_per_host >= 1):
            raise ValueError(f"--ranks-per-host must be a positive integer, "
                             f"got {self.ranks_per_host!r}")
        if not 0 < self.wire_efficiency <= 1:
            raise ValueError(f"--wire-efficiency must be in (0, 1], got {self.wire_efficiency!r}")
        if self.latency_s is not None and not self.latency_s >= 0:
            raise ValueError(f"--latency-us must be non-negative, got {self.latency_s * 1e6!r}")

    def at(self, gbit: float) -> "Cluster":
        return replace(self, gbit=gbit)


@dataclass(frozen=True)
class Settings:
    """The methods' knobs, at the package's and the benchmarks' defaults."""

    ratio: float = 0.01
    hook_ratio: float | None = None         # None: ratio
    min_numel: int = DEFAULTS.min_numel
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB
    fusion_mb: float = HOROVOD_FUSION_MB
    powersgd_rank: int = 4
    powersgd_bucket_mb: float | None = DEFAULT_BUCKET_CAP_MB   # None: one bucket

    def __post_init__(self) -> None:
        for name in ("bucket_cap_mb", "fusion_mb", "powersgd_bucket_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value!r}")
        for name in ("ratio", "hook_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class Prediction:
    """One method's predicted step and its parts (seconds, bytes per rank)."""

    method: str
    step_s: float
    backward_s: float
    compute_s: float
    wire_s: float
    tcp_s: float
    latency_s: float
    bytes_per_rank: float
    shared_s: float           # the bound of the host's shared cores (0 where none)


@dataclass
class _Group:
    compute: float = 0.0      # CPU- or GPU-seconds of one rank
    bytes: float = 0.0
    messages: float = 0.0
    elements: int = 0


def _dense_part(g: _Group, numel: int, n: int, c: Constants, half: bool = False) -> None:
    if half:
        g.compute += numel * (c.half_s + c.half_reduce_s * (n - 1) / n + c.copy_s)
        g.bytes += bytes_model.dense_ring_allreduce(numel, n) / 2
    else:
        g.compute += numel * (c.reduce_s * (n - 1) / n + 2 * c.copy_s)
        g.bytes += bytes_model.dense_ring_allreduce(numel, n)


def _groups(sizes: Sequence[int], cap_mb: float | None) -> list[list[int]]:
    if cap_mb is None:
        return [list(range(len(sizes)))]
    return bucket_by_size([4 * s for s in sizes], cap_mb)


def _method_groups(method: str, shapes: Sequence[Sequence[int]], sizes: Sequence[int], n: int,
                   c: Constants, s: Settings) -> list[_Group]:
    """The method's groups in the order backward produces them, with their costs."""
    hops = 2 * (n - 1)
    log2n = math.ceil(math.log2(n)) if n > 1 else 0
    ratio = s.hook_ratio if (method == HOOK and s.hook_ratio) else s.ratio
    cap = {DENSE: s.fusion_mb, FP16: s.fusion_mb, SCALECOM: s.fusion_mb,
           RING: s.bucket_cap_mb, HOOK: s.bucket_cap_mb,
           POWERSGD: s.powersgd_bucket_mb}[method]
    out = []
    for members in _groups(sizes, cap):
        g = _Group(elements=sum(sizes[i] for i in members))
        compressed = [sizes[i] for i in members if sizes[i] >= s.min_numel]
        small = [sizes[i] for i in members if sizes[i] < s.min_numel]
        if method in (DENSE, FP16):
            _dense_part(g, g.elements, n, c, half=method == FP16)
            g.messages = hops
        elif method == POWERSGD:
            _powersgd_group(g, [shapes[i] for i in members], n, c, s)
            g.messages = 3 * hops
        else:
            for numel in small:
                _dense_part(g, numel, n, c)
            ks = [num_selected(x, ratio) for x in compressed]
            e_c = sum(compressed)
            g.compute += e_c * (c.clip_s + c.update_s) + len(compressed) * c.call_s
            if method == RING:
                # The mean is written into the gradient in the memory update's pass
                # (update_and_scatter): one more write, charged as a copy.
                g.compute += e_c * c.copy_s
                g.compute += c.select_s * e_c / n
                g.bytes += sum(bytes_model.ring(k, n) for k in ks)
                g.messages = hops + 2 * log2n
            else:
                g.compute += e_c * c.scatter_s      # the dense output, a new tensor
                # Every tensor's followers wait for its leader's indices before they go on
                # to the next tensor, so the leaders' selections run one after the other:
                # staggering spreads the work over the ranks, not the wait.
                g.compute += c.select_s * e_c
                g.compute += sum(k * (c.reduce_s * (n - 1) / n + 2 * c.copy_s) for k in ks)
                g.bytes += sum(bytes_model.horovod_path(k, n) for k in ks)
                g.messages = hops + (len(compressed) if method == SCALECOM else log2n)
        if n == 1:
            g = _Group(elements=g.elements)
        out.append(g)
    return out


def _powersgd_group(g: _Group, shapes: list[Sequence[int]], n: int, c: Constants,
                    s: Settings) -> None:
    """torch's PowerSGD hook: a matrix (rows x the rest) is compressed where
    P and Q are less than half its size (min_compression_rate=2)."""
    r = s.powersgd_rank
    for shape in shapes:
        numel = math.prod(shape)
        rows, cols = (shape[0], numel // shape[0]) if len(shape) > 1 else (numel, 1)
        compressed = (rows + cols) * r
        if cols > 1 and 2 * compressed < numel:
            g.compute += (numel * c.powersgd_s + compressed * (c.reduce_s + 2 * c.copy_s)
                          + c.call_s)
            g.bytes += bytes_model.dense_ring_allreduce(compressed, n)
        else:
            _dense_part(g, numel, n, c)


def predict(method: str, shapes: Sequence[Sequence[int]], cluster: Cluster, c: Constants,
            settings: Settings = Settings()) -> Prediction:
    """The predicted step of ``method`` for gradients of ``shapes`` on ``cluster``."""
    if method not in METHODS:
        raise ValueError(f"--methods: unknown method {method!r}; known: {', '.join(METHODS)}")
    sizes = [math.prod(shape) for shape in shapes]
    if not sizes or min(sizes) < 1:
        raise ValueError("shapes: need at least one tensor, every one non-empty")
    n = cluster.workers
    cpu = c.device == "cpu"
    share = cluster.ranks_per_host / c.cores
    latency = c.latency_s if cluster.latency_s is None else cluster.latency_s
    link = cluster.gbit * 1e9 / 8 * cluster.wire_efficiency
    overlap = not cpu or cluster.ranks_per_host < c.cores
    total = sum(sizes)
    end = produced = 0.0
    parts = dict(compute=0.0, wire=0.0, tcp=0.0, latency=0.0, bytes=0.0)
    for g in _method_groups(method, shapes, sizes, n, c, settings):
        produced += g.elements
        ready = cluster.backward_s * produced / total if overlap else cluster.backward_s
        compute = g.compute
        wire = g.bytes / link
        tcp = min(1.0, share) * g.bytes * c.tcp_s_per_byte if cluster.tcp else 0.0
        lat = g.messages * latency
        end = max(ready, end) + compute + max(wire, tcp) + lat
        for key, value in (("compute", compute), ("wire", wire), ("tcp", tcp),
                           ("latency", lat), ("bytes", g.bytes)):
            parts[key] += value
    host_work = (parts["bytes"] * c.tcp_s_per_byte if cluster.tcp else 0.0) + (
        parts["compute"] if cpu else 0.0)
    shared = (cluster.backward_s if cpu else 0.0) + share * host_work
    return Prediction(method=method, step_s=max(cluster.backward_s, end, shared),
                      backward_s=cluster.backward_s, compute_s=parts["compute"],
                      wire_s=parts["wire"], tcp_s=parts["tcp"], latency_s=parts["latency"],
                      bytes_per_rank=parts["bytes"], shared_s=shared)


def predict_all(shapes, cluster: Cluster, c: Constants, settings: Settings = Settings(),
                methods: Sequence[str] = METHODS) -> dict[str, Prediction]:
    return {m: predict(m, shapes, cluster, c, settings) for m in methods}
