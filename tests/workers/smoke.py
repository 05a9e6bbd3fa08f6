"""mpirun worker: one allreduce with horovod.torch or horovod.tensorflow.

usage: smoke.py OUTDIR torch|tensorflow. Each framework runs in its own job:
the two Horovod cores must never share a process.
"""

import sys
from pathlib import Path

import numpy as np

from common import run


def main():
    out, framework = Path(sys.argv[1]), sys.argv[2]
    if framework == "torch":
        import torch
        import horovod.torch as hvd
        hvd.init()
        x = torch.arange(5, dtype=torch.float32) + 10 * hvd.rank()
        summed = hvd.allreduce(x, op=hvd.Sum, name="smoke").numpy()
    else:
        import tensorflow as tf
        import horovod.tensorflow as hvd
        hvd.init()
        x = tf.range(5, dtype=tf.float32) + 10.0 * hvd.rank()
        summed = hvd.allreduce(x, op=hvd.Sum, name="smoke").numpy()
    np.savez(out / f"rank{hvd.rank()}.npz", summed=summed, size=hvd.size())


if __name__ == "__main__":
    run(main, sys.argv[1])
