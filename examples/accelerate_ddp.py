"""Train an MLP on scikit-learn's digits with Hugging Face Accelerate and ScaleCom's DDP hook.

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no examples/accelerate_ddp.py --epochs 5 --save-state acc-state

No Horovod: Accelerate starts the processes (through torchrun: ``--multi_gpu``
does that on a machine without GPUs too) and wraps the model in DDP;
``register_scalecom(accelerator, model, ratio=...)``
(horovod_scalecom.torch.accelerate) puts ScaleCom's hook on it. Without a
GPU, ``Accelerator(cpu=True)`` makes the processes one gloo group (else each
would train alone, and register_scalecom says so). Gradients accumulate
over ``--accumulate`` micro-batches inside ``accelerator.accumulate(model)``:
the hook exchanges once per optimizer step. ``--save-state DIR`` saves
``accelerator.save_state`` at the end (every rank's hook state inside the
main process's files), ``--load-state DIR`` starts from one. Rank 0 prints
the hook's figures.
"""

import argparse
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from horovod_scalecom.torch.accelerate import register_scalecom
from horovod_scalecom.torch.ddp_frameworks import figures

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.tasks import digits, make_model  # noqa: E402

BATCH = 16      # per process and micro-batch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--accumulate", type=int, default=2,
                        help="micro-batches per optimizer step (gradient_accumulation_steps)")
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-state", help="accelerator.save_state here at the end")
    parser.add_argument("--load-state", help="accelerator.load_state from here first")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=args.accumulate)
    x, y, x_test, y_test = map(torch.from_numpy, digits())
    net = make_model("digits", "mlp", args.seed)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    model, opt, loader = accelerator.prepare(net, opt, loader)
    state = register_scalecom(accelerator, model, ratio=args.ratio)
    if args.load_state:
        accelerator.load_state(args.load_state)     # collective: the hook's state too
    for epoch in range(args.epochs):
        for xb, yb in loader:
            with accelerator.accumulate(model):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
        with torch.no_grad():
            accuracy = (net(x_test.to(accelerator.device)).argmax(1).cpu() == y_test)
        if accelerator.is_main_process:
            print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.4f}  test accuracy "
                  f"{accuracy.float().mean().item():.3f}", flush=True)
    if args.save_state:
        accelerator.save_state(args.save_state)     # collective: every rank's hook state
    if accelerator.is_main_process:
        shown = ", ".join(f"{k} {v:g}" for k, v in figures(state).items())
        print(f"final: {accelerator.num_processes} processes; the hook's last exchange: {shown}",
              flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main()
