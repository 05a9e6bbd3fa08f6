"""The costs the step model needs, where they come from, and their JSON file.

Every cost is in seconds, per element of a float32 gradient (or per byte,
or per call), for one rank that has its share of its host to itself. They
come from ``python -m horovod_scalecom.plan.calibrate`` on the user's host
(the package's own C++ kernels, torch, and a TCP loopback), or are given.
``gpu_projection`` derives GPU costs from a memory bandwidth: a projection,
never a measurement.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

#: One pass of the memory update, m += beta * g: read m and g, write m.
PASS_BYTES = 12
#: PowerSGD's memory traffic per element of a compressed matrix on a GPU.
POWERSGD_BYTES = 28


@dataclass(frozen=True)
class Constants:
    """Per-element, per-byte and per-call costs of one rank (seconds)."""

    select_s: float          # the leader's select_topk, per element of p = m + g, at `ratio`
    update_s: float          # gather_update_: gather p at the indices, low-pass memory update
    scatter_s: float         # the dense output from k values (zero the tensor, scatter)
    clip_s: float            # the relative clip's norm (sum_squares), on by default
    reduce_s: float          # a float32 reduction, a += b, per element (dense allreduce)
    copy_s: float            # a float32 copy per element (Horovod's fusion buffer in and out)
    half_s: float            # float32 -> float16 -> float32 per element (fp16's casts)
    half_reduce_s: float     # a float16 reduction per element
    powersgd_s: float        # PowerSGD rank 4 per element of a compressed matrix
    pass_s: float            # m += beta * g per element: one pass over the memory
    call_s: float            # fixed cost per compressed tensor per step (Python, dispatch)
    tcp_s_per_byte: float    # CPU seconds the host's TCP stack spends per byte sent and received
    latency_s: float         # one small message's one-way latency
    cores: int               # cores of the host the ranks share
    device: str = "cpu"      # where backward and the compression run: "cpu" or "gpu"
    ratio: float = 0.01      # the ratio select_s was measured at
    source: str = ""         # where these figures come from
    extra: dict = field(default_factory=dict)   # the calibration's conditions (load, machine)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"constants: {f.name} must be a non-negative number, "
                                 f"got {value!r}")
        if not (isinstance(self.cores, int) and self.cores >= 1):
            raise ValueError(f"constants: cores must be a positive integer, got {self.cores!r}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"constants: device must be 'cpu' or 'gpu', got {self.device!r}")

    def replace(self, **changes) -> "Constants":
        return dataclasses.replace(self, **changes)


def save(constants: Constants, path: str) -> None:
    with open(path, "w") as f:
        json.dump(dataclasses.asdict(constants), f, indent=1)
        f.write("\n")


def load(path: str) -> Constants:
    """Constants from a calibration file; ValueError naming --constants on a bad file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--constants: no such file {path!r} (write one with "
                         "python -m horovod_scalecom.plan.calibrate --out FILE)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--constants {path}: not valid JSON ({exc})") from None
    names = {f.name for f in dataclasses.fields(Constants)}
    if not isinstance(data, dict):
        raise ValueError(f"--constants {path}: expected a JSON object")
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"--constants {path}: unknown keys {sorted(unknown)}")
    try:
        return Constants(**data)
    except TypeError as exc:
        raise ValueError(f"--constants {path}: {exc}") from None


def gpu_projection(cpu: Constants, hbm_bytes_per_s: float, call_s: float = 30e-6,
                   source: str = "") -> Constants:
    """GPU costs projected from ``cpu``'s: each kernel keeps the number of
    memory passes it costs on the CPU (its time over ``pass_s``), and a pass
    moves PASS_BYTES per element at ``hbm_bytes_per_s``; the host's TCP cost
    per byte stays (Cluster.tcp=False drops it for RDMA). A projection: the
    CUDA kernels have not been timed on a GPU by this project."""
    per_pass = PASS_BYTES / hbm_bytes_per_s

    def scaled(value: float) -> float:
        return value / cpu.pass_s * per_pass

    return cpu.replace(select_s=scaled(cpu.select_s), update_s=scaled(cpu.update_s),
                       clip_s=scaled(cpu.clip_s),
                       scatter_s=scaled(cpu.scatter_s), reduce_s=scaled(cpu.reduce_s),
                       copy_s=scaled(cpu.copy_s), half_s=scaled(cpu.half_s),
                       half_reduce_s=scaled(cpu.reduce_s) / 2,
                       # PowerSGD is compute-bound on one CPU thread but not on a GPU: its
                       # memory traffic, 28 bytes per element (M = g + e, P = MQ, Q = M^T P,
                       # e = M - PQ^T), at the GPU's bandwidth.
                       powersgd_s=POWERSGD_BYTES / hbm_bytes_per_s,
                       pass_s=per_pass, call_s=call_s, device="gpu",
                       source=source or f"projected from {cpu.source} at "
                                        f"{hbm_bytes_per_s / 1e12:.2f} TB/s")
