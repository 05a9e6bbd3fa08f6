"""Horovod Elastic with ScaleCom: training that survives workers coming and going.

    horovodrun -np 2 --min-np 2 --max-np 4 --host-discovery-script ./discover_hosts.sh \\
        python examples/pytorch_elastic.py

(one machine: add ``--gloo --network-interface lo``; as root, Open MPI is not
involved, Gloo is). The discovery script prints one ``host:slots`` line per
host that may take part now; Horovod calls it every second or so, and when
its answer changes the workers stop at their next ``state.commit()``, the
world is rebuilt, and training goes on from there. A worker that dies makes
the others roll back to the last commit.

The only difference from Horovod's own elastic example: the State is
``horovod_scalecom.torch.elastic.TorchState`` and gets ``scalecom=``, so the
memory of ScaleCom is committed and restored with the model, and the leaders
and the configuration check follow the new world. The data are scikit-learn's
8x8 digits (they ship with the package); the recipe is Horovod's: SGD with
lr = 0.1 x hvd.size() (rescaled at every reset), momentum 0.9.
"""

import argparse
import sys
from pathlib import Path

import torch

import horovod.torch as hvd
from horovod_scalecom.torch import ScaleCom
from horovod_scalecom.torch.elastic import TorchState

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.tasks import digits, make_model  # noqa: E402

BATCH = 16          # per rank
COMMIT_EVERY = 10   # batches between commits: the most a failure can cost


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1, help="per rank; x hvd.size()")
    parser.add_argument("--batches", type=int, default=600, help="global steps to train")
    args = parser.parse_args()

    hvd.init()
    torch.set_num_threads(1)
    x, y, x_test, y_test = map(torch.from_numpy, digits())
    model = make_model("digits", "mlp", 0)
    compression = ScaleCom(model, ratio=0.01)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.9),
        named_parameters=model.named_parameters(), compression=compression)
    state = TorchState(model=model, optimizer=opt, scalecom=compression, batch=0)

    def rescale_lr():
        for group in opt.param_groups:
            group["lr"] = args.lr * hvd.size()
    state.register_reset_callbacks([rescale_lr])

    @hvd.elastic.run
    def train(state):
        while state.batch < args.batches:
            # Every rank takes its own slice of this step's global batch, in
            # whatever world there is now.
            n, rank = hvd.size(), hvd.rank()
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(state.batch))
            mine = order[:BATCH * n][rank * BATCH:(rank + 1) * BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[mine]), y[mine]).backward()
            opt.step()
            state.batch += 1
            if state.batch % COMMIT_EVERY == 0:
                state.commit()   # may raise HostsUpdatedInterrupt: hvd.elastic.run resumes here

    train(state)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    if hvd.rank() == 0:
        print(f"ranks {hvd.size()}  test accuracy {accuracy:.3f}  "
              f"compression {compression.stats()['compression']:.0f}x", flush=True)


if __name__ == "__main__":
    main()
