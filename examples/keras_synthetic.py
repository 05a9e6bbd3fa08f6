"""Train a small Keras model with model.fit, Horovod and ScaleCom, with ScaleComCallback.

    mpirun -np 2 python examples/keras_synthetic.py [--ratio 0.01] [--epochs 6]

The first epoch is dense (the callback's warm-up); from the second on the
progress bar shows scalecom_ratio (dense bytes / bytes sent) and
scalecom_mb_per_step. Nothing is downloaded.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import horovod.tensorflow.keras as hvd  # noqa: E402
from horovod_scalecom.tensorflow import ScaleCom  # noqa: E402
from horovod_scalecom.config import DEFAULTS  # noqa: E402
from horovod_scalecom.tensorflow.keras import ScaleComCallback  # noqa: E402

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.synthetic import make_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    hvd.init()
    tf.keras.utils.set_random_seed(0)
    x, y = make_data(100 + hvd.rank(), 4096)
    x_test, y_test = make_data(99, 2048)
    model = tf.keras.Sequential([tf.keras.Input((64,)),
                                 tf.keras.layers.Dense(256, activation="relu"),
                                 tf.keras.layers.Dense(256, activation="relu"),
                                 tf.keras.layers.Dense(10)])
    compression = ScaleCom(ratio=args.ratio, beta=args.beta)
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1 * hvd.size(), momentum=0.9),
                                   compression=compression)
    model.compile(opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                 ScaleComCallback(compression, warmup_epochs=1)]
    model.fit(x, y, batch_size=64, epochs=args.epochs, callbacks=callbacks,
              verbose=2 if hvd.rank() == 0 else 0)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    if hvd.rank() == 0:
        print(f"final: Keras + ScaleCom ratio={args.ratio} beta={args.beta} on {hvd.size()} "
              f"ranks, test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
