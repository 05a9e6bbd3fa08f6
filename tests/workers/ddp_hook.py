"""Worker: torch DDP with ScaleCom's communication hook (no Horovod).

usage: ddp_hook.py OUTDIR CASE [CASE ...]

Launched by mpirun (the env:// store at $MASTER_ADDR:$MASTER_PORT) or by
torchrun. Each rank feeds gradient(0, rank, step, i) (tests/workers/common),
records what the hook hands back for every parameter at every step, and
saves it with the memories, for the NumPy reference to judge. Cases:

  plain      defaults: DDP's own buckets (rebuilt after the first step)
  buckets    4 KB buckets: 2 at the first step, 2 other ones after DDP's rebuild
  nosync     two micro-batches per step, the first under no_sync()
  unused     find_unused_parameters=True; emb unused at odd steps
  static     static_graph=True
  view       gradient_as_bucket_view=True
  warmup     warmup_steps=2
  clipnorm   clip_norm=5 (every parameter's gradient scaled to norm <= 5)
  resume     3 steps, state_dict through a file, a new DDP model and state
             loaded from it, 3 more steps
  mismatch   rank 1 builds the state with another ratio
  badratio   rank 1 builds the state with ratio=0
  badbeta    every rank builds the state with beta=1.5
  complex    the model has a complex parameter
  stranger   the state is built from another model than the one DDP wraps
  cuda       the model and its gradients on the GPU (gloo carries CUDA tensors)
  subgroup   (3 ranks) DDP over the process group of ranks 0 and 1 (the
             state takes DDP's group)
  many       300 parameters of 1,100 elements, one bucket each, static_graph:
             every bucket launched at the end of backward
  failrank   rank 1's memory update raises at step 2
  skew       (with resume) rank 1 loads a state whose steps are one ahead
  sparse     the model has an nn.Embedding(sparse=True)
"""

import gc
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

from common import SHAPES, finish_gloo, gradient

STEPS = 6
RATIO, BETA, MIN_NUMEL = 0.05, 0.1, 1024


class Params(torch.nn.Module):
    """One parameter per entry of SHAPES; backward gives exactly the chosen gradients."""

    def __init__(self, cases=()):
        super().__init__()
        for name, shape in SHAPES.items():
            self.register_parameter(name.replace(".", "_"), torch.nn.Parameter(torch.zeros(shape)))
        if "complex" in cases:
            self.z = torch.nn.Parameter(torch.zeros(2048, dtype=torch.complex64))
        self.table = torch.nn.Embedding(50, 8, sparse=True) if "sparse" in cases else None

    def forward(self, grads):
        loss = sum((p * g).sum().real for p, g in zip(self.parameters(), grads) if g is not None)
        if self.table is not None:
            loss = loss + self.table(torch.arange(4)).sum()
        return loss


class Recorder:
    """The hook, wrapped: what it returns for each parameter at each step."""

    def __init__(self, model):
        self.names = {p: n for n, p in model.module.named_parameters()}
        self.step = 0
        self.result = {}
        self.buckets = set()

    def hook(self, state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        # Where each parameter's gradient lies in the bucket (before the hook).
        places = [(self.names[p], (g.data_ptr() - buffer.data_ptr()) // buffer.element_size(),
                   p.shape) for p, g in zip(bucket.parameters(), bucket.gradients())]
        step = self.step
        self.buckets.add(bucket.index())

        def record(future):
            out = future.value()
            for name, start, shape in places:
                self.result[f"out/{step}/{name}"] = (
                    out[start:start + shape.numel()].reshape(shape).cpu().clone().numpy())
            return out
        return scalecom_hook(state, bucket).then(record)


def build(cases, rank, group=None):
    kwargs = {"process_group": group, "find_unused_parameters": "unused" in cases, "static_graph": "static" in cases,
              "gradient_as_bucket_view": "view" in cases}
    if "buckets" in cases:
        # 4 KB caps: two buckets at the first step and two others (their
        # parameters regrouped) after DDP rebuilds them.
        kwargs["bucket_cap_mb_list"] = [0.004]
    device = torch.device("cuda" if "cuda" in cases else "cpu")
    if "many" in cases:
        kwargs["static_graph"] = True
    model = DDP(Params(cases).to(device), **kwargs)
    ratio = RATIO
    if "mismatch" in cases and rank == 1:
        ratio = 0.02
    if "badratio" in cases and rank == 1:
        ratio = 0.0
    source = Params() if "stranger" in cases else model
    beta = 1.5 if "badbeta" in cases else BETA
    state = ScaleComHookState(source, ratio=ratio, beta=beta, min_numel=MIN_NUMEL,
                              warmup_steps=2 if "warmup" in cases else 0,
                              clip_norm=5.0 if "clipnorm" in cases else None,
                              share_timeout=float(os.environ.get("SHARE_TIMEOUT", "60")))
    return model, state


def train(model, state, recorder, cases, rank, steps):
    model.register_comm_hook(state, recorder.hook)
    micro_batches = 2 if "nosync" in cases else 1
    for step in steps:
        recorder.step = step
        for micro in range(micro_batches):
            grads = [torch.from_numpy(gradient(0, rank, step * micro_batches + micro, i, shape))
                     .to(next(model.parameters()).device)
                     for i, shape in enumerate(SHAPES.values())]
            if "unused" in cases and step % 2 == 1:
                grads[3] = None
            if micro < micro_batches - 1:
                with model.no_sync():
                    model(grads).backward()
            else:
                model(grads).backward()
        # The exchange's result reached every used parameter's .grad.
        for name, p in model.module.named_parameters():
            key = f"out/{step}/{name}"
            if p.grad is not None and key in recorder.result:
                np.testing.assert_array_equal(p.grad.cpu().numpy(), recorder.result[key],
                                              err_msg=key)
        model.zero_grad()


def fail_on_rank_1(state, recorder):
    """Rank 1's memory update raises at step 2 (an error of this rank alone)."""
    exchange = state._exchange
    gather = exchange._gather

    def failing(bucket):
        if recorder.step == 2:
            raise RuntimeError("injected failure in rank 1's memory update")
        return gather(bucket)
    exchange._gather = failing


def main():
    outdir, cases = sys.argv[1], set(sys.argv[2:])
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=size)
    failed = False
    try:
        train_and_save(outdir, cases)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        failed = True
        (Path(outdir) / f"rank{rank}.err").write_text(
            f"{type(exc).__name__}: {exc}\n" + traceback.format_exc())
        sys.stderr.write(f"[rank {rank}] {type(exc).__name__}: {exc}\n")
    finish_gloo(failed)


def train_and_save(outdir, cases):
    global SHAPES
    if "many" in cases:
        SHAPES = {f"p{i}": (1100,) for i in range(300)}
    rank = dist.get_rank()
    group = dist.new_group([0, 1]) if "subgroup" in cases else None
    if "subgroup" in cases and rank not in (0, 1):
        np.savez(os.path.join(outdir, f"rank{rank}.npz"))
        return
    model, state = build(cases, rank, group)
    recorder = Recorder(model)
    if "failrank" in cases and rank == 1:
        fail_on_rank_1(state, recorder)
    if "resume" in cases:
        train(model, state, recorder, cases, rank, range(3))
        path = os.path.join(outdir, f"state{rank}.pt")
        torch.save(state.state_dict(), path)
        del model, state
        gc.collect()
        model, state = build(cases, rank, group)
        saved = torch.load(path)
        if "skew" in cases and rank == 1:
            for entry in saved["tensors"].values():
                entry["step"] += 1
        state.load_state_dict(saved)
        recorder.names = {p: n for n, p in model.module.named_parameters()}
        train(model, state, recorder, cases, rank, range(3, STEPS))
    else:
        train(model, state, recorder, cases, rank, range(STEPS))
    result = dict(recorder.result)
    result["buckets"] = np.array(len(recorder.buckets))
    for name, tensor_state in state.state.tensors.items():
        result[f"step/{name}"] = np.array(tensor_state.step)
        if tensor_state.memory is not None:
            result[f"mem/{name}"] = tensor_state.memory.cpu().clone().numpy()
    stats = state.stats()
    result["bytes_sent"] = np.array(stats["bytes_sent"])
    result["dense_bytes"] = np.array(stats["dense_bytes"])
    np.savez(os.path.join(outdir, f"rank{rank}.npz"), **result)
    # Python comm hooks (PowerSGD's too) can abort the process at exit when
    # DDP's reducer outlives destroy_process_group(): drop it first.
    del model, state
    gc.collect()


if __name__ == "__main__":
    main()
