"""Horovod Elastic with Keras and ScaleCom: model.fit that survives workers coming and going.

    horovodrun -np 2 --min-np 2 --max-np 4 --host-discovery-script ./discover_hosts.sh \\
        python examples/keras_elastic.py

(one machine: add ``--gloo --network-interface lo``). Horovod's Keras elastic
example, with two changes: the optimizer's compression is ScaleCom, and the
State is ``horovod_scalecom.tensorflow.elastic.KerasState`` with
``scalecom=``, so ScaleCom's memory is committed and restored with the model
and its leaders follow each new world. The data are scikit-learn's 8x8 digits
(they ship with the package); the recipe is Horovod's: SGD with
lr = 0.1 x hvd.size() (rescaled at every reset), momentum 0.9.
"""

import argparse

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

import horovod.tensorflow.keras as hvd
from horovod_scalecom.tensorflow import ScaleCom
from horovod_scalecom.tensorflow.elastic import KerasState

BATCH = 16           # per rank
STEPS_PER_EPOCH = 10  # a commit at every epoch's end: the most a failure can cost


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1, help="per rank; x hvd.size()")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    hvd.init()
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(x))
    x, y, x_test, y_test = x[order][:1200], y[order][:1200], x[order][1200:], y[order][1200:]

    model = tf.keras.Sequential([tf.keras.Input(shape=(64,)),
                                 tf.keras.layers.Dense(256, activation="relu"),
                                 tf.keras.layers.Dense(10)])
    compression = ScaleCom(ratio=0.01)
    opt = hvd.DistributedOptimizer(
        tf.keras.optimizers.legacy.SGD(learning_rate=args.lr * hvd.size(), momentum=0.9),
        compression=compression)
    model.compile(optimizer=opt, metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # The optimizer's slots must exist before the State copies them. Horovod's
    # example trains one batch for that; with ScaleCom that step would be a
    # collective outside hvd.elastic.run, which a joining worker runs alone
    # (and ScaleCom refuses), so the slots are made directly.
    opt._create_all_weights(model.trainable_variables)
    state = KerasState(model, scalecom=compression, batch=0, epoch=0)

    def rescale_lr():
        tf.keras.backend.set_value(model.optimizer.lr, args.lr * hvd.size())
    state.register_reset_callbacks([rescale_lr])

    callbacks = [hvd.elastic.UpdateBatchStateCallback(state),
                 hvd.elastic.UpdateEpochStateCallback(state),
                 hvd.elastic.CommitStateCallback(state, batches_per_commit=STEPS_PER_EPOCH)]

    @hvd.elastic.run
    def train(state):
        # Each rank its own shard of the data, in whatever world there is now.
        shard = tf.data.Dataset.from_tensor_slices((x, y)).shard(hvd.size(), hvd.rank())
        shard = shard.shuffle(1200, seed=state.epoch).repeat().batch(BATCH)
        model.fit(shard, steps_per_epoch=STEPS_PER_EPOCH, epochs=args.epochs - state.epoch,
                  callbacks=callbacks, verbose=0)

    train(state)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    if hvd.rank() == 0:
        print(f"ranks {hvd.size()}  test accuracy {accuracy:.3f}  "
              f"compression {compression.stats()['compression']:.0f}x", flush=True)


if __name__ == "__main__":
    main()
