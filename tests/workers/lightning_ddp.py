"""Worker: examples/pytorch_lightning_ddp.py's module under Lightning's own
launcher (``Trainer(accelerator="cpu", devices=N, strategy=DDPStrategy(
process_group_backend="gloo"))`` started as a plain script: Lightning starts
the other ranks) with ScaleComCallback.

usage: lightning_ddp.py OUTDIR DEVICES PHASE [PHASE ...]

Each phase fits a fresh module (seed 0) for at most BATCHES batches an epoch
and writes OUTDIR/PHASE/rank{r}.npz (final parameters, the hook's memories
and steps, its stats, the logged metrics) or OUTDIR/PHASE/rank{r}.err:

  full      EPOCHS epochs in one go, logging every step to a CSV
  half      EPOCHS / 2 epochs, ModelCheckpoint's last.ckpt in OUTDIR/ckpt
  resumed   EPOCHS epochs from OUTDIR/ckpt/last.ckpt
  foreign   EPOCHS epochs from $FOREIGN_CKPT (another job's checkpoint)
  accumulate  EPOCHS epochs with accumulate_grad_batches=2
"""

import gc
import importlib.util
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, BATCHES, RATIO, LR, SEED = 4, 5, 0.05, 0.05, 0


def load_example():
    spec = importlib.util.spec_from_file_location(
        "pytorch_lightning_ddp", ROOT / "examples" / "pytorch_lightning_ddp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fit(example, outdir: Path, devices: int, phase: str) -> dict:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from horovod_scalecom.torch.lightning import ScaleComCallback

    scalecom = ScaleComCallback(ratio=RATIO, share_timeout=30)
    callbacks = [scalecom]
    epochs, ckpt_path, options = EPOCHS, None, {}
    if phase == "half":
        epochs = EPOCHS // 2
        callbacks.append(ModelCheckpoint(dirpath=outdir / "ckpt", save_last=True))
    elif phase == "resumed":
        ckpt_path = outdir / "ckpt" / "last.ckpt"
    elif phase == "foreign":
        ckpt_path = os.environ["FOREIGN_CKPT"]
    elif phase == "accumulate":
        options["accumulate_grad_batches"] = 2
    trainer = example.make_trainer(
        devices, epochs, callbacks, limit_train_batches=BATCHES, num_sanity_val_steps=0,
        limit_val_batches=0, enable_checkpointing=phase == "half",
        logger=CSVLogger(outdir / phase, name="logs"), log_every_n_steps=1, **options)
    module = example.DigitsModule(LR, SEED)
    train, _ = example.loaders()
    trainer.fit(module, train, ckpt_path=ckpt_path)
    result = {f"param/{n}": p.detach().clone().numpy() for n, p in module.net.named_parameters()}
    for name, state in scalecom.hook_state.state.tensors.items():
        result[f"step/{name}"] = np.array(state.step)
        if state.memory is not None:
            result[f"mem/{name}"] = state.memory.clone().numpy()
    stats = scalecom.hook_state.stats()
    for key in ("bytes_sent", "dense_bytes", "compression"):
        result[f"stats/{key}"] = np.array(stats[key])
    result["stats/k"] = np.array(sum(t["k"] or 0 for t in stats["tensors"].values()))
    leaders = [t["leader"] for t in stats["tensors"].values() if t["k"] is not None]
    if leaders:         # none on one rank: nothing is exchanged there
        result["stats/leader"] = np.array(leaders[0])
    for key, value in trainer.logged_metrics.items():
        result[f"logged/{key}"] = np.array(float(value))
    result["global_step"] = np.array(trainer.global_step)
    return result


def main() -> None:
    outdir, devices, phases = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    example = load_example()
    # Lightning's launcher sets LOCAL_RANK for the ranks it starts (and 0 in itself).
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    failed = False
    for phase in phases:
        (outdir / phase).mkdir(parents=True, exist_ok=True)
        try:
            result = fit(example, outdir, devices, phase)
            np.savez(outdir / phase / f"rank{rank}.npz", **result)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            failed = failed or phase != "foreign"
            (outdir / phase / f"rank{rank}.err").write_text(
                f"{type(exc).__name__}: {exc}\n" + traceback.format_exc())
            sys.stderr.write(f"[rank {rank}] {phase}: {type(exc).__name__}: {exc}\n")
        gc.collect()
    if torch.distributed.is_initialized():
        from common import finish_gloo
        finish_gloo(failed)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
