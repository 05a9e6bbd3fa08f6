"""Train a small MLP with a Horovod DistributedGradientTape and ScaleCom (TensorFlow).

    mpirun -np 2 python examples/tensorflow_synthetic.py [--ratio 0.01] [--epochs 8] [--path ring]

The same synthetic 10-class task as examples/pytorch_synthetic.py (labels from
a fixed random teacher network; nothing is downloaded). --path horovod (the
default) uses horovod.tensorflow's DistributedGradientTape with ScaleCom as its
compression; --path ring uses horovod_scalecom.tensorflow.DistributedGradientTape
(the ScaleCom ring). Prints progress and a final accuracy line.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import horovod.tensorflow as hvd  # noqa: E402
import horovod_scalecom.tensorflow as hsc  # noqa: E402
from horovod_scalecom.config import DEFAULTS  # noqa: E402

# benchmarks/ (the examples' data and models) is in the checkout, not the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.synthetic import make_data  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="per rank: x hvd.size(), the Horovod recipe")
    parser.add_argument("--path", choices=["horovod", "ring"], default="horovod")
    return parser.parse_args()


def make_train_step(model, opt, compression, path):
    """One step as a tf.function; --path picks whose DistributedGradientTape averages."""
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        if path == "horovod":
            tape = hvd.DistributedGradientTape(tape, compression=compression)
        else:
            tape = hsc.DistributedGradientTape(tape, compression=compression)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def main():
    args = parse_args()
    hvd.init()
    tf.keras.utils.set_random_seed(0)
    x, y = make_data(100 + hvd.rank(), 4096)
    x_test, y_test = make_data(99, 2048)
    model = tf.keras.Sequential([tf.keras.Input((64,)),
                                 tf.keras.layers.Dense(256, activation="relu"),
                                 tf.keras.layers.Dense(256, activation="relu"),
                                 tf.keras.layers.Dense(10)])
    opt = tf.keras.optimizers.SGD(args.lr * hvd.size(), momentum=0.9)
    compression = hsc.ScaleCom(ratio=args.ratio, beta=args.beta)
    train_step = make_train_step(model, opt, compression, args.path)

    hvd.broadcast_variables(model.variables, root_rank=0)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        perm = np.random.default_rng(epoch).permutation(len(x))
        for i in range(0, len(x), args.batch):
            batch = perm[i:i + args.batch]
            loss = train_step(x[batch], y[batch])
        acc = float(np.mean(np.argmax(model(x_test).numpy(), 1) == y_test))
        if hvd.rank() == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  loss {float(loss):.3f}  "
                  f"test accuracy {acc:.3f}", flush=True)
    if hvd.rank() == 0:
        print(f"final: ScaleCom ({args.path} path) ratio={args.ratio} beta={args.beta} "
              f"on {hvd.size()} ranks, test accuracy {acc:.3f}, "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
