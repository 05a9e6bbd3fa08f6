"""Worker (torchrun): a model under DDP and ScaleCom's hook, eager and compiled.

usage: ddp_compile.py OUTDIR MODE [MODE ...]

Modes, each a fresh model from the same seed trained STEPS steps on the same
batches:

  eager        DDP(model)
  aot_eager    torch.compile(DDP(model), backend="aot_eager"): dynamo's
               DDPOptimizer splits the graph at the buckets, eager kernels
  inductor     torch.compile(DDP(model)): the default backend, generated kernels
  inner        DDP(torch.compile(model, backend="aot_eager")), the state built
               from the compiled DDP model: names as in the eager model

For every mode, each rank saves what the hook got (its own gradients) and
gave back (the mean) for every parameter at every step, the final
parameters, the hook state's parameter names and the number of graphs dynamo
compiled, for the test to hold against the NumPy reference and the eager run.
"""

import gc
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

STEPS, RATIO, LR = 4, 0.05, 0.1


class Net(torch.nn.Module):
    # A class of the user's own: dynamo traces its forward (torch's own
    # containers such as nn.Sequential are skipped when DDP calls them).
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 256)
        self.fc2 = torch.nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def batch(step, rank):
    g = torch.Generator().manual_seed(step * 1009 + rank)
    return torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


class Recorder:
    """The hook, wrapped: each parameter's gradient before and mean after."""

    def __init__(self, net):
        self.names = {p: n for n, p in net.named_parameters()}
        self.step = 0
        self.result = {}

    def hook(self, state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        places = [(self.names[p], (g.data_ptr() - buffer.data_ptr()) // buffer.element_size(),
                   g.numel()) for p, g in zip(bucket.parameters(), bucket.gradients())]
        step = self.step
        for name, start, numel in places:
            self.result[f"in/{step}/{name}"] = buffer[start:start + numel].clone().numpy()

        def record(future):
            out = future.value()
            for name, start, numel in places:
                self.result[f"out/{step}/{name}"] = out[start:start + numel].clone().numpy()
            return out
        return scalecom_hook(state, bucket).then(record)


def run(mode, rank):
    # Each mode compiles afresh: dynamo would otherwise reuse the previous
    # mode's graph for this model's code (its guards hold for a new instance).
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Net()
    if mode == "inner":
        model = DDP(torch.compile(net, backend="aot_eager"))
    else:
        model = DDP(net)
    run_model = model
    if mode in ("aot_eager", "inductor"):
        run_model = torch.compile(model, backend=mode)
    state = ScaleComHookState(run_model, ratio=RATIO, share_timeout=60)
    recorder = Recorder(net)
    model.register_comm_hook(state, recorder.hook)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    graphs = _graphs()
    for step in range(STEPS):
        recorder.step = step
        x, y = batch(step, rank)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(run_model(x), y).backward()
        opt.step()
    result = {f"{mode}/{k}": v for k, v in recorder.result.items()}
    for name, p in net.named_parameters():
        result[f"{mode}/param/{name}"] = p.detach().clone().numpy()
    result[f"{mode}/graphs"] = np.array(_graphs() - graphs)
    result[f"{mode}/names"] = np.array(sorted(state.state_dict()["tensors"]))
    del run_model, model, state
    gc.collect()
    return result


def _graphs():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def main():
    outdir, modes = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {}
    for mode in modes:
        result.update(run(mode, rank))
    np.savez(outdir / f"rank{rank}.npz", **result)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
