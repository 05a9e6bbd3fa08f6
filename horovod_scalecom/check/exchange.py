"""One rank of a self-check exchange, started by :mod:`.report` on 2 ranks:

    python -m horovod_scalecom.check.exchange KIND OUTDIR

KIND is one of :data:`KINDS`. Each rank feeds the gradients of
:func:`.expected.gradient` for :data:`.expected.STEPS` steps and writes the
averaged gradients to ``OUTDIR/rank<r>.npz``, or what it raised to
``OUTDIR/rank<r>.err``. A kind imports one framework only (horovod.torch and
horovod.tensorflow must never share a process).
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from horovod_scalecom.check.expected import CONFIG, SHAPES, STEPS, Outputs, gradient

# What a wait for another rank may take before ScaleCom raises: far below the
# job's deadline, so that a rank left alone ends with ScaleCom's message
# instead of being killed without one.
SHARE_TIMEOUT_S = 30.0


def launcher_rank() -> int:
    """This process's rank before any framework is up (Open MPI, MPICH, torchrun)."""
    for key in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _torch_params() -> Any:
    """A module whose parameters are SHAPES; ``model(grads)`` is a loss whose
    gradient for each parameter is exactly the tensor given for it."""
    import torch

    class Params(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, shape in SHAPES.items():
                self.register_parameter(name, torch.nn.Parameter(torch.zeros(shape)))

        def forward(self, grads: list) -> Any:
            return sum((p * g).sum() for p, g in zip(self.parameters(), grads))

    torch.set_num_threads(1)
    return Params()


def _feed_torch(model: Any, params: Any, rank: int, synchronize: Callable[[], Any]) -> Outputs:
    """STEPS steps through ``model`` (the module or its DDP wrapper); after
    each, ``synchronize()`` and the parameters' averaged gradients."""
    import torch

    out: Outputs = {}
    for step in range(STEPS):
        grads = [torch.from_numpy(gradient(rank, step, i)) for i in range(len(SHAPES))]
        model(grads).backward()
        synchronize()
        for name, p in params.named_parameters():
            out[f"out/{step}/{name}"] = p.grad.detach().numpy().copy()
        params.zero_grad()
    return out


def _knobs() -> dict[str, Any]:
    return {"ratio": CONFIG.ratio, "beta": CONFIG.beta, "min_numel": CONFIG.min_numel,
            "share_timeout": SHARE_TIMEOUT_S}


def torch_horovod() -> Outputs:
    """PyTorch: Horovod's DistributedOptimizer with ScaleCom as its compression."""
    import torch
    import horovod.torch as hvd
    from horovod_scalecom.torch import ScaleCom

    hvd.init()
    model = _torch_params()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                   named_parameters=model.named_parameters(),
                                   compression=ScaleCom(model, **_knobs()))
    return _feed_torch(model, model, hvd.rank(), opt.synchronize)


def torch_ring() -> Outputs:
    """PyTorch: the ScaleCom ring (horovod_scalecom.torch.DistributedOptimizer)."""
    import torch
    import horovod.torch as hvd
    from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

    hvd.init()
    model = _torch_params()
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                               named_parameters=model.named_parameters(),
                               compression=ScaleCom(model, **_knobs()))
    return _feed_torch(model, model, hvd.rank(), opt.synchronize)


def torch_ddp() -> Outputs:
    """PyTorch DDP on gloo with ScaleCom's communication hook (no Horovod)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

    dist.init_process_group("gloo")
    params = _torch_params()
    model = DistributedDataParallel(params)
    model.register_comm_hook(ScaleComHookState(model, **_knobs()), scalecom_hook)
    out = _feed_torch(model, params, dist.get_rank(), lambda: None)
    # torch's Python communication hooks can abort the process at exit when
    # the DDP model outlives the process group: drop it first.
    del model
    gc.collect()
    dist.destroy_process_group()
    return out


def tensorflow_horovod() -> Outputs:
    """TensorFlow: Horovod's DistributedGradientTape with ScaleCom as its compression."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import horovod.tensorflow as hvd
    from horovod_scalecom.tensorflow import ScaleCom

    hvd.init()
    variables = [tf.Variable(tf.zeros(shape), name=name) for name, shape in SHAPES.items()]
    compression = ScaleCom(**_knobs())
    out: Outputs = {}
    for step in range(STEPS):
        grads = [tf.constant(gradient(hvd.rank(), step, i)) for i in range(len(SHAPES))]
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(v * g) for v, g in zip(variables, grads)])
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        for name, g in zip(SHAPES, tape.gradient(loss, variables)):
            out[f"out/{step}/{name}"] = g.numpy()
    return out


KINDS: dict[str, Callable[[], Outputs]] = {
    "torch": torch_horovod,
    "tensorflow": tensorflow_horovod,
    "ring": torch_ring,
    "ddp": torch_ddp,
}


def main(argv: list[str]) -> int:
    kind, outdir = argv[0], Path(argv[1])
    rank = launcher_rank()
    try:
        outputs = KINDS[kind]()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which says what to do
        (outdir / f"rank{rank}.err").write_text(f"{type(exc).__name__}: {exc}")
        sys.stderr.write(f"[rank {rank}] {type(exc).__name__}: {exc}\n")
        return 1
    np.savez(outdir / f"rank{rank}.npz", **outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
