"""An example's DDP training replayed in this process against the NumPy
reference: what a run of the example through ScaleCom's hook must end with.

The examples under torchrun and Ray Train (examples/pytorch_ddp_torchrun.py,
examples/ray_train_ddp.py) expose ``make_model``, ``make_optimizer`` and
``batch(seed, step, rank)``; each rank's gradient is computed here in turn,
the reference averages them, and the optimizer steps on the mean.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import HorovodPathSimulator


def replay(example: ModuleType, seed: int, steps: int, lr: float, ratio: float,
           ranks: int = 2) -> tuple[dict[str, np.ndarray], HorovodPathSimulator]:
    """(parameters after ``steps``, the simulator holding every rank's memory)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the workers' count: the same sums, the same bits
    try:
        model = example.make_model(seed)
        opt = example.make_optimizer(model, lr)
        sim = HorovodPathSimulator(ranks, ScaleComConfig(ratio=ratio))
        for step in range(steps):
            grads = []
            for rank in range(ranks):
                model.zero_grad()
                x, y = example.batch(seed, step, rank)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                grads.append({n: p.grad.reshape(-1).numpy().copy()
                              for n, p in model.named_parameters()})
            for name, p in model.named_parameters():
                mean = sim.step(name, [g[name] for g in grads]).outputs[0]
                p.grad = torch.from_numpy(mean.reshape(p.shape).copy())
            opt.step()
        params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    finally:
        torch.set_num_threads(threads)
    return params, sim
