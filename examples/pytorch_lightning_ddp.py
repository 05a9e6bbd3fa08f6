"""Train an MLP on scikit-learn's digits with PyTorch Lightning, DDP and ScaleCom's hook.

    python examples/pytorch_lightning_ddp.py --devices 2 --epochs 5 --checkpoint-dir ckpt
    python examples/pytorch_lightning_ddp.py --devices 2 --epochs 8 --checkpoint-dir ckpt \\
        --resume ckpt/last.ckpt

No Horovod, no torchrun: Lightning starts the other processes itself
(``Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"))``),
and ``ScaleComCallback(ratio=...)`` (horovod_scalecom.torch.lightning)
registers ScaleCom's hook on the model Lightning wrapped in DDP. Lightning's
ModelCheckpoint saves ``last.ckpt`` after every epoch, with every rank's
hook state inside; ``--resume`` goes on from it. The hook's figures are
logged as ``scalecom/...`` (a CSV under ``--log-dir``); rank 0 prints them.
"""

import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from horovod_scalecom.torch.lightning import ScaleComCallback

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.tasks import digits, make_model  # noqa: E402

BATCH = 16      # per rank


class DigitsModule(pl.LightningModule):
    """The MLP of examples/pytorch_ddp_digits.py (64-256-256-10), SGD with momentum."""

    def __init__(self, lr: float, seed: int) -> None:
        super().__init__()
        self.lr = lr
        self.net = make_model("digits", "mlp", seed)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, on_step=True, on_epoch=False, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        accuracy = (self.net(x).argmax(1) == y).float().mean()
        self.log("test_accuracy", accuracy, on_epoch=True, sync_dist=True, batch_size=len(x))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loaders(batch: int = BATCH) -> tuple[DataLoader, DataLoader]:
    """Digits: 1,200 training images, shuffled (Lightning gives each rank its
    share through a DistributedSampler, reshuffled every epoch), 597 test."""
    x, y, x_test, y_test = map(torch.from_numpy, digits())
    return (DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True),
            DataLoader(TensorDataset(x_test, y_test), batch_size=200))


def make_trainer(devices: int, epochs: int, callbacks: list, **options) -> pl.Trainer:
    """A CPU Trainer over ``devices`` processes, DDP over gloo."""
    return pl.Trainer(accelerator="cpu", devices=devices,
                      strategy=DDPStrategy(process_group_backend="gloo"),
                      max_epochs=epochs, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, **options)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="processes (CPU)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default="lightning-checkpoints")
    parser.add_argument("--resume", help="a checkpoint to go on from (e.g. CKPT_DIR/last.ckpt)")
    parser.add_argument("--log-dir", default="lightning-logs")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    scalecom = ScaleComCallback(ratio=args.ratio)
    trainer = make_trainer(
        args.devices, args.epochs,
        [scalecom, ModelCheckpoint(dirpath=args.checkpoint_dir, save_last=True)],
        logger=CSVLogger(args.log_dir, name="scalecom"), log_every_n_steps=10)
    train, test = loaders()
    trainer.fit(DigitsModule(args.lr, args.seed), train, test, ckpt_path=args.resume)
    if trainer.is_global_zero:
        logged = {k: round(float(v), 4) for k, v in trainer.logged_metrics.items()}
        print(f"final: {args.epochs} epochs on {trainer.world_size} ranks, logged {logged}",
              flush=True)
        stats = scalecom.hook_state.stats()
        print(f"the hook: {stats['compression']:.0f}x fewer gradient bytes than dense "
              f"({stats['bytes_sent']} bytes per step)", flush=True)


if __name__ == "__main__":
    main()
