"""mpirun worker: Horovod's DistributedOptimizer features with ScaleCom (torch).

usage: torch_features.py OUTDIR CASE [--path horovod|ring] [--steps N]

Each rank saves, per step, the gradients it handed over (``in/{step}/{name}``,
zeros where it had none) and what the exchange gave back
(``out/{step}/{name}``); the test feeds the first to the NumPy reference and
compares the second. Cases:

- ``order``: the ranks hand their gradients over in different orders (the
  loss sums them in a rank-dependent order), and some parameters get no
  gradient on some ranks at some steps (Horovod's force-allreduce sends zeros).
- ``sparse``: an nn.Embedding(sparse=True) with sparse_as_dense=True and SparseAdam.
- ``sparse_bypass``: the same embedding without sparse_as_dense (Horovod's
  sparse allgather carries it, uncompressed) beside a dense parameter that
  ScaleCom compresses; each rank records whether ScaleCom warned.
- ``sum``, ``predivide``: op=hvd.Sum; gradient_predivide_factor=2.
- ``stagger``: stagger_leaders=True (one hand-over order on every rank).
- ``process_set``: the optimizer and ScaleCom over the process set of ranks
  0..n-2; the last rank trains nothing.
- ``refuse_*``: arguments ScaleCom refuses; the error is the result.
"""

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import horovod.torch as hvd
from horovod_scalecom.torch import DistributedOptimizer, ScaleCom

from common import SHAPES, gradient, run
from torch_compressor import Params

CFG = dict(ratio=0.05, beta=0.1, min_numel=100)


def make_optimizer(args, model, compression, base=None, **kw):
    base = base or torch.optim.SGD(model.parameters(), lr=0.0)
    wrap = hvd.DistributedOptimizer if args.path == "horovod" else DistributedOptimizer
    return wrap(base, named_parameters=model.named_parameters(), compression=compression, **kw)


def missing(rank: int, step: int, index: int) -> bool:
    """Whether this rank computes no gradient for parameter `index` at `step`."""
    return index == 1 and (step + rank) % 2 == 0 or index == 3 and rank == 0


def train(args, out, model, opt, members):
    """Steps with gradient(seed, rank, step, i); a rank outside `members` only
    keeps the others company."""
    rank = hvd.rank()
    names = [n for n, _ in model.named_parameters()]
    result = {}
    for step in range(args.steps):
        grads = []
        for i, (_, p) in enumerate(model.named_parameters()):
            g = torch.from_numpy(gradient(args.seed, rank, step, i, tuple(p.shape)))
            grads.append(None if args.case == "order" and missing(rank, step, i) else g)
        if rank not in members:
            continue
        opt.zero_grad()
        pairs = list(zip(model.parameters(), grads))
        if args.case == "order" and rank % 2 == 1:
            pairs.reverse()      # another backward order, so another hand-over order
        loss = sum((p * g).sum() for p, g in pairs if g is not None)
        loss.backward()
        opt.synchronize()
        for name, p, g in zip(names, model.parameters(), grads):
            result[f"in/{step}/{name}"] = (np.zeros(tuple(p.shape), np.float32) if g is None
                                           else g.numpy())
            result[f"out/{step}/{name}"] = p.grad.detach().numpy().copy()
        with opt.skip_synchronize():
            opt.step()
    np.savez(out / f"rank{rank}.npz", **result)


def sparse(args, out):
    """An embedding with sparse gradients, densified by Horovod's sparse_as_dense
    and made sparse again for SparseAdam, which takes no other kind."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(300, 16, sparse=True)
    opt = make_optimizer(args, emb, ScaleCom(emb, **CFG), sparse_as_dense=True,
                         base=torch.optim.SparseAdam(emb.parameters(), lr=1e-3))
    result = {}
    for step in range(args.steps):
        # Distinct rows: the densified gradient is then exactly `dense`.
        rows = torch.from_numpy(np.random.default_rng([step, hvd.rank()]).permutation(300)[:40])
        weight = torch.from_numpy(gradient(args.seed, hvd.rank(), step, 0, (40, 16)))
        dense = torch.zeros(300, 16).index_add_(0, rows, weight)
        opt.zero_grad()
        (emb(rows) * weight).sum().backward()
        opt.synchronize()
        result[f"in/{step}/weight"] = dense.numpy()
        grad = emb.weight.grad
        assert grad.is_sparse, "the averaged gradient of a sparse embedding came back dense"
        result[f"out/{step}/weight"] = grad.to_dense().numpy().copy()
        with opt.skip_synchronize():
            opt.step()
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def sparse_bypass(args, out):
    """The embedding's sparse gradient goes around ScaleCom (with a warning);
    the dense parameter beside it is compressed as usual."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(300, 16, sparse=True)
    model.w = torch.nn.Parameter(torch.zeros(40, 16))
    base = torch.optim.SGD(model.parameters(), lr=0.0)
    opt = make_optimizer(args, model, ScaleCom(model, **CFG), base=base)
    result = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(args.steps):
            rows = torch.from_numpy(
                np.random.default_rng([step, hvd.rank()]).permutation(300)[:40])
            weight = torch.from_numpy(gradient(args.seed, hvd.rank(), step, 0, (40, 16)))
            gw = torch.from_numpy(gradient(args.seed, hvd.rank(), step, 1, (40, 16)))
            opt.zero_grad()
            ((model.emb(rows) * weight).sum() + (model.w * gw).sum()).backward()
            opt.synchronize()
            result[f"in/{step}/emb"] = torch.zeros(300, 16).index_add_(0, rows, weight).numpy()
            result[f"out/{step}/emb"] = model.emb.weight.grad.to_dense().numpy().copy()
            result[f"in/{step}/w"] = gw.numpy()
            result[f"out/{step}/w"] = model.w.grad.numpy().copy()
            with opt.skip_synchronize():
                opt.step()
    result["warned"] = np.array([any("emb.weight is sparse" in str(w.message) for w in caught)])
    # No index-share receive may stay open for the embedding (Horovod's stall
    # inspector would complain every minute): each completes within seconds.
    handles = [h for h, _ in opt._compression._broadcast._posted.values()]
    deadline = time.monotonic() + 10
    while not all(hvd.poll(h) for h in handles) and time.monotonic() < deadline:
        time.sleep(0.01)
    still_open = sum(not hvd.poll(h) for h in handles)
    # Summed over ranks: also keeps every rank here until all have looked (a
    # rank that ended would shut Horovod down and end the others' receives).
    result["open_receives"] = hvd.allreduce(torch.tensor([still_open]), op=hvd.Sum).numpy()
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def refuse(args):
    """Builds what the case names and takes one step: ScaleCom must refuse it."""
    model = Params(SHAPES, torch.float32)
    kw, ps = {}, None
    if args.case == "refuse_adasum":
        kw["op"] = hvd.Adasum
    elif args.case == "refuse_min":
        kw["op"] = hvd.Min
    elif args.case in ("refuse_ps_optimizer", "refuse_ps_scalecom", "refuse_ps_ring"):
        ps = hvd.add_process_set(list(range(hvd.size() - 1)))
        if args.case != "refuse_ps_scalecom":
            kw["process_set"] = ps
    compression = ScaleCom(model, **CFG,
                           process_set=ps if args.case == "refuse_ps_scalecom" else None)
    opt = make_optimizer(args, model, compression, **kw)
    grads = [torch.from_numpy(gradient(0, hvd.rank(), 0, i, tuple(p.shape)))
             for i, p in enumerate(model.parameters())]
    model.loss(grads).backward()
    opt.step()
    hvd.barrier()
    raise AssertionError(f"{args.case} raised nothing on rank {hvd.rank()}")


def join(args):
    """Rank 1 calls hvd.join() after one step while rank 0 trains on: rank 0
    must not wait forever for the indices rank 1 leads."""
    model = Params(SHAPES, torch.float32)
    opt = make_optimizer(args, model, ScaleCom(model, **CFG, share_timeout=10))
    for step in range(4 if hvd.rank() == 0 else 1):
        grads = [torch.from_numpy(gradient(0, hvd.rank(), step, i, tuple(p.shape)))
                 for i, p in enumerate(model.parameters())]
        opt.zero_grad()
        model.loss(grads).backward()
        opt.step()
    hvd.join()
    raise AssertionError(f"join raised nothing on rank {hvd.rank()}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("case")
    parser.add_argument("--path", choices=["horovod", "ring"], default="horovod")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["HOROVOD_DYNAMIC_PROCESS_SETS"] = "1"    # hvd.add_process_set after init
    hvd.init()
    out = Path(args.outdir)
    if args.case.startswith("refuse"):
        refuse(args)
    elif args.case == "join":
        join(args)
    elif args.case == "sparse":
        sparse(args, out)
    elif args.case == "sparse_bypass":
        sparse_bypass(args, out)
    else:
        model = Params(SHAPES, torch.float32)
        members, ps, kw = list(range(hvd.size())), None, {}
        if args.case == "process_set":
            members = members[:-1]
            ps = hvd.add_process_set(members)
            kw["process_set"] = ps
        elif args.case == "sum":
            kw["op"] = hvd.Sum
        elif args.case == "predivide":
            kw["gradient_predivide_factor"] = 2.0
        compression = ScaleCom(model, **CFG, process_set=ps,
                               stagger_leaders=(args.case == "stagger"))
        opt = make_optimizer(args, model, compression, **kw)
        train(args, out, model, opt, members)
        if ps is not None:
            hvd.remove_process_set(ps)


if __name__ == "__main__":
    import sys
    run(main, sys.argv[1])
