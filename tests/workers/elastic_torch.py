"""horovodrun --elastic worker (PyTorch): digits MLP under hvd.elastic.run.

usage: elastic_torch.py OUTDIR [--mode dense|scalecom] [--scenario ...]
(the arguments and the result files: elastic_common.py)

dense: hvd.Compression.none and hvd.elastic.TorchState; scalecom: ScaleCom as
the compression and horovod_scalecom.torch.elastic.TorchState(scalecom=...).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import horovod.torch as hvd  # noqa: E402

import elastic_common as ec  # noqa: E402


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, ec.HIDDEN), torch.nn.ReLU(),
                               torch.nn.Linear(ec.HIDDEN, 10))


def main(args) -> None:
    log = ec.Events(args.outdir)
    hvd.init()
    torch.set_num_threads(1)
    log(f"init rank {hvd.rank()} size {hvd.size()}")
    x, y, x_test, y_test = map(torch.from_numpy, ec.digits())
    model = make_model()

    sgd = torch.optim.SGD(model.parameters(), lr=ec.LR * hvd.size(), momentum=ec.MOMENTUM)
    if args.mode in ("scalecom", "unheld"):
        from horovod_scalecom.torch import ScaleCom
        from horovod_scalecom.torch.elastic import TorchState
        compression = ScaleCom(model, ratio=ec.RATIO, min_numel=ec.MIN_NUMEL)
    else:
        compression = hvd.Compression.none
    opt = hvd.DistributedOptimizer(sgd, named_parameters=model.named_parameters(),
                                   compression=compression)
    if args.mode == "scalecom":
        state = TorchState(model=model, optimizer=opt, scalecom=compression, batch=0)
    else:
        state = hvd.elastic.TorchState(model=model, optimizer=opt, batch=0)

    resets = [0]

    def on_reset():
        resets[0] += 1
        for group in opt.param_groups:
            group["lr"] = ec.LR * hvd.size()
        log(f"reset {resets[0]}: rank {hvd.rank()} size {hvd.size()} batch {state.batch}")

    state.register_reset_callbacks([on_reset])

    @hvd.elastic.run
    def train(state):
        log(f"train from batch {state.batch} as rank {hvd.rank()} of {hvd.size()}")
        while state.batch < args.total:
            rank, size = hvd.rank(), hvd.size()
            if args.scenario == "kill" and state.batch == args.kill_at and ec.is_victim():
                ec.die(args, log, state.batch)
            mine = torch.from_numpy(ec.batch_indices(state.batch, size, rank, args.seed))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[mine]), y[mine]).backward()
            opt.step()
            state.batch += 1
            if state.batch % ec.COMMIT_EVERY == 0:
                state.commit()      # may raise HostsUpdatedInterrupt: train() starts again
                if ec.should_wait_for_hosts(args, state.batch, size):
                    ec.wait_for_hosts(args, state, rank, log)

    train(state)

    rank, size = hvd.rank(), hvd.size()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    params = {name: p.detach().numpy() for name, p in model.named_parameters()}
    log(f"done: rank {rank} size {size} accuracy {accuracy:.4f}")
    extra = {}
    if args.mode == "scalecom" and hasattr(compression, "stats"):
        try:
            extra["compression"] = float(compression.stats()["compression"])
        except Exception:  # noqa: BLE001 - a figure for the report only
            pass
    ec.write_result(args, rank, size, params, accuracy, resets[0], state.batch, extra)


if __name__ == "__main__":
    _args = ec.parse_args()
    ec.run(lambda: main(_args), _args)
