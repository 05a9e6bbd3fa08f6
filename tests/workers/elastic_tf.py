"""horovodrun --elastic worker (TensorFlow, tf.keras / Keras 2): digits MLP trained
with model.fit under hvd.elastic.run and Horovod's Keras elastic callbacks.

usage: elastic_tf.py OUTDIR [--mode dense|scalecom] [--scenario ...]
(the arguments and the result files: elastic_common.py)

dense: hvd.Compression.none and hvd.elastic.KerasState; scalecom: ScaleCom as
the compression and horovod_scalecom.tensorflow.elastic.TensorFlowKerasState
(scalecom=...).

A Keras epoch here is COMMIT_EVERY (10) batches and the state is committed
at the end of each epoch only (CommitStateCallback's on_epoch_end; its
batches_per_commit is set out of reach): after UpdateBatchStateCallback and
UpdateEpochStateCallback have moved the state to (epoch + 1, batch 0). So
every commit, and every restore, is at an epoch boundary, the global batch is
``state.epoch * 10``, and each fit() after a reset starts a whole epoch,
with the data of exactly the batches that are left (deterministic; Horovod's
mid-epoch resume, params['steps'] - state.batch, is not needed).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import horovod.tensorflow.keras as hvd  # noqa: E402

import elastic_common as ec  # noqa: E402

NEVER = 10 ** 9     # CommitStateCallback's batches_per_commit: commit at epoch ends only


def make_model() -> tf.keras.Model:
    tf.random.set_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(64,)),
        tf.keras.layers.Dense(ec.HIDDEN, activation="relu", name="fc1"),
        tf.keras.layers.Dense(10, name="fc2"),
    ])
    return model


def batches(first: int, last: int, size: int, rank: int, x, y, seed: int):
    """This rank's data for global batches first..last-1, in order."""
    idx = np.concatenate([ec.batch_indices(b, size, rank, seed) for b in range(first, last)])
    return tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).batch(ec.BATCH)


class ElasticEvents(tf.keras.callbacks.Callback):
    """The scenario's events, at the global batch ``state.epoch * 10 + batch``:
    grow/shrink wait for the new hosts at the trigger commit (after the
    commit of that epoch's end); the kill victim dies at the start of its batch."""

    def __init__(self, args, state, log):
        super().__init__()
        self.args, self.state, self.log = args, state, log

    def on_train_batch_begin(self, batch, logs=None):
        step = self.state.epoch * ec.COMMIT_EVERY + batch
        if self.args.scenario == "kill" and step == self.args.kill_at and ec.is_victim():
            ec.die(self.args, self.log, step)

    def on_epoch_end(self, epoch, logs=None):
        step = self.state.epoch * ec.COMMIT_EVERY     # UpdateEpochStateCallback ran before
        if ec.should_wait_for_hosts(self.args, step, hvd.size()):
            ec.wait_for_hosts(self.args, self.state, hvd.rank(), self.log)


def main(args) -> None:
    log = ec.Events(args.outdir)
    hvd.init()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    log(f"init rank {hvd.rank()} size {hvd.size()}")
    x, y, x_test, y_test = ec.digits()

    if args.mode in ("scalecom", "unheld"):
        from horovod_scalecom.tensorflow import ScaleCom
        from horovod_scalecom.tensorflow.elastic import TensorFlowKerasState
        compression = ScaleCom(ratio=ec.RATIO, min_numel=ec.MIN_NUMEL)
    else:
        compression = hvd.Compression.none

    model = make_model()
    opt = hvd.DistributedOptimizer(
        tf.keras.optimizers.legacy.SGD(learning_rate=ec.LR * hvd.size(), momentum=ec.MOMENTUM),
        compression=compression)
    model.compile(optimizer=opt,
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # The optimizer's variables (iterations, momentum slots) must exist before
    # the State copies them; Horovod's example trains a batch for that, which
    # would be an extra collective: create them directly instead.
    opt._create_all_weights(model.trainable_variables)

    if args.mode == "scalecom":
        state = TensorFlowKerasState(model, scalecom=compression, batch=0, epoch=0)
    else:
        state = hvd.elastic.KerasState(model, batch=0, epoch=0)

    resets = [0]

    def on_reset():
        resets[0] += 1
        tf.keras.backend.set_value(model.optimizer.lr, ec.LR * hvd.size())
        log(f"reset {resets[0]}: rank {hvd.rank()} size {hvd.size()} "
            f"epoch {state.epoch} batch {state.batch}")

    state.register_reset_callbacks([on_reset])

    callbacks = [
        hvd.elastic.UpdateBatchStateCallback(state),
        hvd.elastic.UpdateEpochStateCallback(state),
        hvd.elastic.CommitStateCallback(state, batches_per_commit=NEVER),
        ElasticEvents(args, state, log),
    ]
    epochs = args.total // ec.COMMIT_EVERY

    @hvd.elastic.run
    def train(state):
        size, rank = hvd.size(), hvd.rank()
        first = state.epoch * ec.COMMIT_EVERY
        log(f"train from batch {first} (epoch {state.epoch}, batch {state.batch}) "
            f"as rank {rank} of {size}")
        if state.epoch >= epochs:
            return
        data = batches(first, args.total, size, rank, x, y, args.seed)
        # As in Horovod's example: fit's own epochs count from 0 (no
        # initial_epoch), UpdateEpochStateCallback adds them to state.epoch.
        state.model.fit(data, epochs=epochs - state.epoch,
                        steps_per_epoch=ec.COMMIT_EVERY, callbacks=callbacks,
                        shuffle=False, verbose=0)

    train(state)

    rank, size = hvd.rank(), hvd.size()
    logits = model(x_test, training=False).numpy()
    accuracy = float((logits.argmax(1) == y_test).mean())
    params = {v.name: v.numpy() for v in model.trainable_variables}
    log(f"done: rank {rank} size {size} accuracy {accuracy:.4f}")
    ec.write_result(args, rank, size, params, accuracy, resets[0],
                    state.epoch * ec.COMMIT_EVERY + state.batch)


if __name__ == "__main__":
    _args = ec.parse_args()
    ec.run(lambda: main(_args), _args)
