"""Shared by the mpirun workers: deterministic inputs and result files."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import numpy as np

# name -> shape of the tensors the compressor tests use; one is below
# min_numel and one has odd sizes.
SHAPES = {"fc1.weight": (64, 48), "fc1.bias": (64,), "fc2.weight": (10, 64), "emb": (37, 29)}


SCALES = np.array([1.0, 3.0, 0.5, 8.0, 1.0, 2.0], np.float32)


def gradient(seed: int, rank: int, step: int, index: int, shape,
             inject: bool = False) -> np.ndarray:
    """Deterministic per (seed, rank, step, tensor); with ``inject``, rank 1's
    first tensor gets an Inf and a NaN at step 2 (the non-finite policy tests)
    and rank 0's third tensor is 10^4 times larger at step 3 (the guard's spike)."""
    rng = np.random.default_rng([seed, rank, step, index])
    # Norms that jump from step to step and differ by rank, so that ScaleCom's
    # relative clip (on by default) both acts and rests in every test.
    g = rng.standard_normal(shape).astype(np.float32) * SCALES[step % len(SCALES)] * np.float32(1 + rank)
    if inject and rank == 1 and step == 2 and index == 0:
        g.flat[5], g.flat[9] = np.inf, np.nan
    if inject and rank == 0 and step == 3 and index == 2:
        g *= np.float32(1e4)        # a spike for the divergence guard
    return g


def launcher_rank() -> int:
    # mpirun, horovodrun --gloo, torchrun
    for key in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def run(main, outdir: str) -> None:
    """Run main(); on error write rank{r}.err and exit 1 (mpirun then ends the job)."""
    out = Path(outdir)
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - reported to the test, then re-raised
        rank = launcher_rank()
        (out / f"rank{rank}.err").write_text(f"{type(exc).__name__}: {exc}\n"
                                             + traceback.format_exc())
        sys.stderr.write(f"[rank {rank}] {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(1)


def finish_gloo(failed: bool) -> None:
    """End a torch.distributed (gloo) worker: every rank reports before any
    exits (mpirun and torchrun end the job at the first failed exit), bounded
    in case a rank is gone; exit 1 if this rank failed or the barrier did."""
    from datetime import timedelta

    import torch.distributed as dist     # here: the TensorFlow workers import this module too
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=30), wait_all_ranks=True)
    except RuntimeError:
        failed = True
    dist.destroy_process_group()
    sys.exit(1 if failed else 0)


def route_through_kernels_library(compression, path, optimizer=None):
    """Every compressed tensor, CPU ones too, through the CUDA code path, over
    the host double at `path` (tests/abi_double.build_for_workers): torch's
    CUDA-dispatch code (csrc/torch/cuda_ops.cc built for CPU tensors) and,
    given a ring `optimizer`, the ring's device buffers, which then treat host
    tensors as device 0's."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # tests/, for abi_double
    from abi_double import load_torch_host_ops
    from horovod_scalecom.cuda import CudaKernels

    ops = load_torch_host_ops(path, build=False)
    table = CudaKernels(path).addresses()
    compression.state.kernels = lambda tensor, name: ops
    compression.state.kernel_table = lambda tensor, name: table
    if optimizer is not None:
        optimizer._ring_device = lambda grad, name: 0
