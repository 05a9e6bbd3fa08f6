"""mpirun worker: the ScaleCom ring, horovod_scalecom.torch.DistributedOptimizer.

usage: torch_ring.py OUTDIR MODE [options]
"""

import argparse
import gc
import sys
from pathlib import Path

import numpy as np
import torch

import horovod.torch as hvd
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

from common import gradient, route_through_kernels_library, run


def shapes_for(args):
    shapes = {"a": (64, 48), "b": (37, 29), "bias": (64,), "c": (1000,)}
    if args.tiny:
        shapes["tiny"] = (3,)          # fewer elements than ranks: empty chunks
    return shapes


class Params(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(shape)))


def sequence(args, out):
    shapes = shapes_for(args)
    device = torch.device(args.device)
    model = Params(shapes).to(device)
    compression = ScaleCom(model, ratio=args.ratio, beta=args.beta, warmup_steps=args.warmup,
                           min_numel=args.min_numel, share_timeout=args.timeout)
    grouping = {"default": {}, "cap": {"bucket_cap_mb": 0.005}, "num": {"num_groups": 2},
                "list": {"groups": [[model.a, model.c]]}}[args.groups]
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                               named_parameters=model.named_parameters(),
                               compression=compression,
                               backward_passes_per_step=args.bpps, **grouping)
    if args.kernels_lib:
        route_through_kernels_library(compression, args.kernels_lib, opt)
    result = {}
    for step in range(args.steps):
        if args.fail_at == step and hvd.rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        grads = [torch.from_numpy(gradient(args.seed, hvd.rank(), step, i, shape)).to(device)
                 for i, shape in enumerate(shapes.values())]
        terms = [(p * g).sum() for p, g in zip(model.parameters(), grads)]
        if args.dynamic:
            # Each rank leaves out a different parameter and builds its loss in its
            # own order: gradients appear in different orders and sets per rank.
            skip = (hvd.rank() + step) % len(terms)
            terms = [t for i, t in enumerate(terms) if i != skip]
            terms = terms[hvd.rank():] + terms[:hvd.rank()]
        if args.bpps == 1:
            sum(terms).backward()
        else:
            # Halves, exact in float32: the accumulated gradient is the reference's.
            for _ in range(args.bpps):
                (0.5 * sum(terms)).backward(retain_graph=True)
        opt.synchronize()
        for name, p in model.named_parameters():
            result[f"out/{step}/{name}"] = p.grad.cpu().numpy().copy()
        result[f"bytes/{step}"] = np.array(opt.stats()["ring_bytes"])
        result[f"compress_s/{step}"] = np.array(opt.stats()["compress_s"])
        result[f"transport/{step}"] = np.array(opt.stats()["ring_transport"])
        result[f"groups/{step}"] = np.array(opt.stats()["ring_groups"])
        result["breakdown_keys"] = np.array(sorted(opt.stats()["breakdown"]))
        model.zero_grad()
    for name, entry in compression.state_dict()["tensors"].items():
        if entry["memory"] is not None:
            assert entry["memory"].device == device, (name, entry["memory"].device)
            result[f"mem/{name}"] = entry["memory"].cpu().numpy()
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def patterns(args, out):
    """Horovod's optimizer patterns with the ring: synchronize(), clip, then
    step() inside skip_synchronize(); step() after synchronize() warns and
    does not exchange again; zero_grad() or a second backward while groups
    are in flight is refused."""
    import warnings
    model = Params(shapes_for(args))
    compression = ScaleCom(model, ratio=args.ratio, min_numel=args.min_numel)
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0),
                               named_parameters=model.named_parameters(),
                               compression=compression, bucket_cap_mb=0.005)

    def backward(step):
        grads = [torch.from_numpy(gradient(args.seed, hvd.rank(), step, i, p.shape))
                 for i, p in enumerate(model.parameters())]
        sum((p * g).sum() for p, g in zip(model.parameters(), grads)).backward()

    result = {}
    backward(0)
    opt.synchronize()
    result["averaged/0"] = np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    clipped = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # no warning inside skip_synchronize
        with opt.skip_synchronize():
            opt.step()
    for p, b, c in zip(model.parameters(), before, clipped):
        assert torch.equal(p.detach(), b - c), "step() did not apply the clipped average"
    opt.zero_grad()

    backward(1)
    opt.synchronize()
    averaged = [p.grad.clone() for p in model.parameters()]
    steps_before = [s.step for s in compression.state.tensors.values()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert any("skip_synchronize" in str(w.message) for w in caught), caught
    assert [s.step for s in compression.state.tensors.values()] == steps_before, "exchanged twice"
    for p, a in zip(model.parameters(), averaged):
        assert torch.equal(p.grad, a)
    opt.zero_grad()

    backward(2)
    try:
        opt.zero_grad()
    except AssertionError as exc:
        result["zero_grad_error"] = np.array(str(exc))
    try:
        backward(3)
    except AssertionError as exc:
        result["second_backward_error"] = np.array(str(exc))
    opt.synchronize()

    # Wrapped again (a new optimizer over the same model and ScaleCom): the
    # old optimizer's hooks go with it, so one backward is one exchange.
    del opt
    gc.collect()
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0),
                               named_parameters=model.named_parameters(),
                               compression=compression)
    opt.zero_grad()
    steps_before = [s.step for s in compression.state.tensors.values()]
    backward(4)
    opt.synchronize()
    assert [s.step for s in compression.state.tensors.values()] == [t + 1 for t in steps_before]
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("mode", choices=["sequence", "patterns"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--min-numel", type=int, default=100)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--dynamic", action="store_true")
    parser.add_argument("--bpps", type=int, choices=[1, 2], default=1,
                        help="backward passes per step (2: two halves of the loss)")
    parser.add_argument("--groups", choices=["default", "cap", "num", "list"],
                        default="default", help="how the ring groups the gradients")
    parser.add_argument("--fail-at", type=int, default=-1)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--kernels-lib", default="",
                        help="the CUDA code path over this build of the C ABI, for every tensor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hvd.init()
    {"sequence": sequence, "patterns": patterns}[args.mode](args, Path(args.outdir))


if __name__ == "__main__":
    run(main, sys.argv[1])
