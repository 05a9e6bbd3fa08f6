"""Worker: gradient accumulation with ScaleCom's DDP hook, through Hugging
Face Accelerate or through plain DDP, on the same data.

usage: accelerate_ddp.py OUTDIR MODE [MODE ...]

  accelerate  under ``accelerate launch --multi_gpu --num_processes 2``:
              Accelerator(cpu=True, gradient_accumulation_steps=2),
              ``accelerator.prepare``, register_scalecom, and every
              micro-batch in ``accelerator.accumulate(model)``; the state is
              saved (``accelerator.save_state``) after SAVE_AT micro-batches,
              and once all MICRO are done it is loaded back
              (``accelerator.load_state``) and the micro-batches after
              SAVE_AT trained again (OUTDIR/rank{r}.npz: "again/..." keys)
  alone       as accelerate, but Accelerator() without cpu=True: on a
              machine without GPUs each process runs alone, and
              register_scalecom must refuse it
  plain       DDP, ScaleComHookState + scalecom_hook, and the accumulating
              micro-batches under ``model.no_sync()`` with the loss divided
              by 2, as Accelerate does; on the gloo group of the modes
              before it, else under torchrun's

Micro-batch m of rank r is sixteen digits picked by (m, r) alone. For each
mode every rank writes OUTDIR/MODE/rank{r}.npz: the final parameters, the
hook's memories and steps, and its step count after every micro-batch (or
OUTDIR/MODE/rank{r}.err, and the modes after it do not run).
"""

import contextlib
import gc
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.tasks import digits, make_model

MICRO, SAVE_AT, ACCUMULATE, RATIO, LR, SEED, BATCH = 12, 6, 2, 0.05, 0.05, 0, 16


def micro_batch(x, y, m: int, rank: int):
    mine = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + m))
    mine = mine[rank * BATCH:(rank + 1) * BATCH]
    return x[mine], y[mine]


def exchanges(state) -> int:
    return max(s.step for s in state.state.tensors.values())


def record(net, state, steps, prefix=""):
    out = {f"{prefix}param/{n}": p.detach().clone().numpy() for n, p in net.named_parameters()}
    for name, s in state.state.tensors.items():
        out[f"{prefix}step/{name}"] = np.array(s.step)
        if s.memory is not None:
            out[f"{prefix}mem/{name}"] = s.memory.clone().numpy()
    out[f"{prefix}exchanges"] = np.array(steps)
    return out


def run_accelerate(outdir: Path, cpu: bool = True) -> tuple[int, dict]:
    from accelerate import Accelerator

    from horovod_scalecom.torch.accelerate import register_scalecom

    accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=ACCUMULATE)
    net = make_model("digits", "mlp", SEED)
    model, opt = accelerator.prepare(net, torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9))
    state = register_scalecom(accelerator, model, ratio=RATIO, share_timeout=30)
    x, y = map(torch.from_numpy, digits()[:2])
    rank = accelerator.process_index

    def train(micro):
        steps, synced = [], []
        for m in micro:
            with accelerator.accumulate(model):
                xb, yb = micro_batch(x, y, m, rank)
                accelerator.backward(torch.nn.functional.cross_entropy(model(xb), yb))
                opt.step()
                opt.zero_grad()
            steps.append(exchanges(state))
            synced.append(accelerator.sync_gradients)
            if m + 1 == SAVE_AT and micro[0] == 0:
                accelerator.save_state(str(outdir / "state"))
        return steps, synced

    steps, synced = train(range(MICRO))
    result = record(net, state, steps)
    result["synced"] = np.array(synced)
    accelerator.load_state(str(outdir / "state"))
    result["loaded_exchanges"] = np.array(exchanges(state))
    steps, _ = train(range(SAVE_AT, MICRO))
    result.update(record(net, state, steps, prefix="again/"))
    return rank, result      # the DDP model goes with this frame (and the Accelerator)


def run_plain(outdir: Path) -> tuple[int, dict]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

    if not dist.is_initialized():           # else: the group Accelerate's run made
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = make_model("digits", "mlp", SEED)
    model = DDP(net)
    state = ScaleComHookState(model, ratio=RATIO, share_timeout=30)
    model.register_comm_hook(state, scalecom_hook)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = map(torch.from_numpy, digits()[:2])
    steps = []
    for m in range(MICRO):
        sync = (m + 1) % ACCUMULATE == 0
        with contextlib.nullcontext() if sync else model.no_sync():
            xb, yb = micro_batch(x, y, m, rank)
            (torch.nn.functional.cross_entropy(model(xb), yb) / ACCUMULATE).backward()
        if sync:
            opt.step()
            opt.zero_grad()
        steps.append(exchanges(state))
    result = record(net, state, steps)
    del model, opt, state
    return rank, result


def main() -> None:
    outdir, modes = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    failed = False
    for mode in modes:
        (outdir / mode).mkdir(parents=True, exist_ok=True)
        try:
            if mode == "plain":
                rank, result = run_plain(outdir)
            else:
                rank, result = run_accelerate(outdir, cpu=mode == "accelerate")
            np.savez(outdir / mode / f"rank{rank}.npz", **result)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            failed = True
            (outdir / mode / f"rank{rank}.err").write_text(
                f"{type(exc).__name__}: {exc}\n" + traceback.format_exc())
            sys.stderr.write(f"[rank {rank}] {type(exc).__name__}: {exc}\n")
            break
        # Python comm hooks can abort the process at exit when DDP's reducer
        # outlives destroy_process_group(): the models went with run_*'s frame.
        gc.collect()
    if not torch.distributed.is_initialized():
        sys.exit(1 if failed else 0)
    from common import finish_gloo
    finish_gloo(failed)


if __name__ == "__main__":
    main()
