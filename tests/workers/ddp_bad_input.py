"""Worker (torchrun): bad input to ScaleCom's DDP hook, one case per run.

usage: ddp_bad_input.py OUTDIR CASE

Every rank writes the exception it got to rank{r}.err (none: rank{r}.npz),
then waits for the others at a bounded barrier, so the test sees each rank's
own error. Cases:

  fsdp         the state is built from an FSDP model
  fsdphook     the state is built from the bare module, the hook registered
               on FSDP (FSDP calls it with gradient shards)
  dataparallel the state is built from a torch.nn.DataParallel
  pyreducer    DDP built under optimize_ddp="python_reducer" (compiled autograd)
  othergroup   DDP over the default group, the state given another group
  loadsize     a checkpoint of the hook's state saved by a job of 4 ranks
  loadratio    a checkpoint saved with ratio 0.01 loaded into a state of 0.05
  loadswapped  rank 1 loads rank 0's checkpoint (the others load their own)
"""

import gc
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

from common import finish_gloo

TIMEOUT = 60.0


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.fc(x)


def one_step(model, state):
    model.register_comm_hook(state, scalecom_hook)
    model(torch.ones(4, 64)).sum().backward()


def checkpoint(ratio):
    """This rank's hook state after one step with ``ratio``."""
    model = DDP(Net())
    state = ScaleComHookState(model, ratio=ratio, min_numel=64, share_timeout=TIMEOUT)
    one_step(model, state)
    saved = state.state_dict()
    del model, state
    gc.collect()
    return saved


def run(case, rank):
    if case == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        ScaleComHookState(FSDP(Net(), device_id=torch.device("cpu")))
    elif case == "fsdphook":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        net = Net()
        state = ScaleComHookState(net, min_numel=64, share_timeout=TIMEOUT)
        model = FSDP(net, device_id=torch.device("cpu"))
        model.register_comm_hook(state, scalecom_hook)
        model(torch.ones(4, 64)).sum().backward()
    elif case == "dataparallel":
        ScaleComHookState(torch.nn.DataParallel(Net()))
    elif case == "pyreducer":
        torch._dynamo.config.optimize_ddp = "python_reducer"
        ScaleComHookState(DDP(Net()))
    elif case == "othergroup":
        ScaleComHookState(DDP(Net()), process_group=dist.new_group(list(range(dist.get_world_size()))))
    elif case.startswith("load"):
        saved = checkpoint(0.01 if case == "loadratio" else 0.05)
        if case == "loadsize":
            saved.update(rank=rank, size=4)
        if case == "loadswapped" and rank == 1:
            saved["rank"] = 0           # what rank 0's file holds
        model = DDP(Net())
        state = ScaleComHookState(model, ratio=0.05, min_numel=64, share_timeout=TIMEOUT)
        state.load_state_dict(saved)
    else:
        raise SystemExit(f"unknown case {case}")


def main():
    outdir, case = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    failed = False
    try:
        run(case, rank)
        np.savez(outdir / f"rank{rank}.npz")
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        failed = True
        (outdir / f"rank{rank}.err").write_text(
            f"{type(exc).__name__}: {exc}\n" + traceback.format_exc())
    gc.collect()
    finish_gloo(failed)


if __name__ == "__main__":
    main()
