"""mpirun worker: Horovod's tape and Keras optimizer arguments on the
TensorFlow ring (horovod_scalecom.tensorflow's DistributedGradientTape,
keras DistributedOptimizer).

usage: tf_ring.py OUTDIR CASES [--steps N]; CASES comma-separated, each
writing outdir/<case>/rank{r}.npz in tests/workers/torch_ring.py's layout:
``in/{step}/{name}`` (what this rank handed to the exchange: for
backward_passes_per_step the float32 sum of its passes), ``out/{step}/{name}``
(the exchange's result), ``bytes/{step}`` and ``groups/{step}`` (the ring's).
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import horovod.tensorflow as hvd  # noqa: E402
from horovod_scalecom.tensorflow import (  # noqa: E402
    DistributedGradientTape, PartialDistributedGradientTape, ScaleCom)
from horovod_scalecom.tensorflow.keras import DistributedOptimizer  # noqa: E402

from common import gradient, run  # noqa: E402

SHAPES = {"a": (64, 48), "b": (37, 29), "bias": (64,), "c": (1000,)}
CFG = dict(ratio=0.05, beta=0.1, min_numel=100)


def make_variables(shapes=SHAPES):
    return [tf.Variable(tf.zeros(shape), name=name) for name, shape in shapes.items()]


def inputs(args, t, shapes=SHAPES, salt=0):
    return [gradient(args.seed + salt, hvd.rank(), t, i, shape)
            for i, shape in enumerate(shapes.values())]


def linear_loss(variables, grads):
    """A loss whose gradient for each variable is the given array, exactly."""
    return tf.add_n([tf.reduce_sum(v * g) for v, g in zip(variables, grads)])


def save(out, result):
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def tape_steps(args, out, **tape_kw):
    """The ring tape in tf.function over SHAPES; Horovod's tape arguments ``tape_kw``."""
    variables = make_variables()
    compression = ScaleCom(**CFG)
    tapes = []

    @tf.function
    def step(grads_in):
        with tf.GradientTape() as tape:
            loss = linear_loss(variables, grads_in)
        tape = DistributedGradientTape(tape, compression, **tape_kw)
        tapes.append(tape)      # traced once: its exchange runs every step
        return tape.gradient(loss, variables)

    result = {}
    for t in range(args.steps):
        grads_in = inputs(args, t)
        for name, g_in, g in zip(SHAPES, grads_in, step([tf.constant(g) for g in grads_in])):
            result[f"in/{t}/{name}"] = g_in
            result[f"out/{t}/{name}"] = g.numpy()
        stats = tapes[-1].exchange.stats()
        result[f"bytes/{t}"] = np.array(stats["ring_bytes"])
        result[f"groups/{t}"] = np.array(stats["ring_groups"])
    save(out, result)


def groups_list(args, out):
    # Horovod's groups by variable: a and c fused, b alone, bias (dense) alone.
    variables = make_variables()
    compression = ScaleCom(**CFG)
    result = {}
    for t in range(args.steps):
        grads_in = inputs(args, t)
        with tf.GradientTape() as tape:        # eager this time
            loss = linear_loss(variables, grads_in)
        tape = DistributedGradientTape(tape, compression, groups=[[variables[0], variables[3]]])
        for name, g_in, g in zip(SHAPES, grads_in, tape.gradient(loss, variables)):
            result[f"in/{t}/{name}"] = g_in
            result[f"out/{t}/{name}"] = g.numpy()
        result[f"bytes/{t}"] = np.array(tape.exchange.stats()["ring_bytes"])
        result[f"groups/{t}"] = np.array(tape.exchange.stats()["ring_groups"])
    save(out, result)


def sparse(args, out):
    """An embedding (tf.gather's IndexedSlices) with sparse_as_dense=True goes
    through the ring; without it, through Horovod's sparse allreduce with a
    warning (``emb_horovod``)."""
    table = tf.Variable(tf.zeros([300, 16]), name="table")
    other = tf.Variable(tf.zeros([300, 16]), name="other")
    compression = ScaleCom(**CFG)

    def step(variable, rows, weight, sparse_as_dense):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable, rows) * weight)
        tape = DistributedGradientTape(tape, compression, sparse_as_dense=sparse_as_dense)
        return tape.gradient(loss, [variable])[0]

    ring_step = tf.function(lambda rows, weight: step(table, rows, weight, True))

    result = {}
    for t in range(args.steps):
        rows = np.random.default_rng([t, hvd.rank()]).permutation(300)[:40]
        weight = gradient(args.seed, hvd.rank(), t, 0, (40, 16))
        dense = np.zeros((300, 16), np.float32)
        dense[rows] = weight        # distinct rows: the densified gradient exactly
        result[f"in/{t}/table"] = dense
        result[f"out/{t}/table"] = ring_step(tf.constant(rows), tf.constant(weight)).numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = np.arange(40) + 7 * hvd.rank()
        g = step(other, tf.constant(rows), tf.constant(np.full((40, 16), hvd.rank() + 1.0,
                                                               np.float32)), False)
    result["sparse_is_slices"] = np.array(isinstance(g, tf.IndexedSlices))
    result["sparse_mean"] = tf.convert_to_tensor(g).numpy()
    result["warned"] = np.array(" | ".join(str(w.message) for w in caught))
    save(out, result)


def local(args, out):
    """register_local_source: a model-parallel variable whose shape differs by
    rank stays local (divided by the number of ranks), the others are the
    ring's; PartialDistributedGradientTape and get_local_and_global_gradients
    say the same."""
    variables = make_variables()
    mine = tf.Variable(tf.zeros([5 + hvd.rank(), 3]), name="model_parallel")
    layer = tf.keras.layers.Dense(4)
    layer.build((None, 7 + hvd.rank()))      # a local layer: its shapes differ by rank too
    compression = ScaleCom(**CFG)
    result = {}
    for t in range(args.steps):
        grads_in = inputs(args, t)
        own = gradient(args.seed, hvd.rank(), t, 9, mine.shape)
        with tf.GradientTape(persistent=True) as tape:
            loss = linear_loss(variables + [mine], grads_in + [own])
            loss += tf.reduce_sum(layer(tf.ones([2, 7 + hvd.rank()])))
        if t % 2 == 0:
            dtape = DistributedGradientTape(tape, compression)
            dtape.register_local_source(mine)
            for var in layer.trainable_weights:
                dtape.register_local_source(var)
        else:
            dtape = PartialDistributedGradientTape(tape, compression, local_layers=[layer])
            dtape.register_local_source(mine)
        sources = variables + [mine] + layer.trainable_weights
        local_pairs, global_pairs = dtape.get_local_and_global_gradients(loss, sources)
        assert [s.name for s, _ in local_pairs] == [s.name for s in sources[len(variables):]]
        assert [s.name for s, _ in global_pairs] == [v.name for v in variables]
        for name, g_in, (_, g) in zip(SHAPES, grads_in, global_pairs):
            result[f"in/{t}/{name}"] = g_in
            result[f"out/{t}/{name}"] = g.numpy()
        result[f"local_in/{t}"] = own
        result[f"local_out/{t}"] = local_pairs[0][1].numpy()
        result[f"layer_out/{t}"] = local_pairs[1][1].numpy()
    save(out, result)


class Probe(tf.keras.Model):
    """One weight per SHAPES entry, output sum(w * x_part): under loss =
    sum(output) with batch size 1, each weight's gradient is its part of the
    sample, exactly."""

    def __init__(self):
        super().__init__()
        self.ws = [self.add_weight(name=name, shape=shape, initializer="zeros")
                   for name, shape in SHAPES.items()]

    def call(self, x):
        parts = tf.split(x[0], [int(np.prod(s)) for s in SHAPES.values()])
        total = tf.add_n([tf.reduce_sum(w * tf.reshape(p, w.shape))
                          for w, p in zip(self.ws, parts)])
        return tf.reshape(total, [1, 1])


def keras_fit(args, out):
    """model.fit with backward_passes_per_step=2, average_aggregated_gradients:
    SGD(1) from zero, so -weights after each second batch is the exchange's
    result; the weights go back to zero after each step."""
    model = Probe()
    opt = DistributedOptimizer(tf.keras.optimizers.SGD(1.0), ScaleCom(**CFG),
                               backward_passes_per_step=2, average_aggregated_gradients=True)
    model.compile(opt, loss=lambda y, p: tf.reduce_sum(p))
    passes = [np.concatenate([g.reshape(-1) for g in inputs(args, p)])
              for p in range(2 * args.steps)]
    result = {}

    class Record(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch % 2 == 1:
                t = batch // 2
                for name, w in zip(SHAPES, model.ws):
                    result[f"out/{t}/{name}"] = np.float32(0) - w.numpy()
                    w.assign(tf.zeros_like(w))
                result[f"bytes/{t}"] = np.array(opt.scalecom_exchange.last_bytes)
            else:       # the first pass applies nothing
                assert all(not w.numpy().any() for w in model.ws), "a first pass applied"

    model.fit(np.stack(passes), np.zeros((len(passes), 1), np.float32), batch_size=1,
              epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
    for t in range(args.steps):
        for i, name in enumerate(SHAPES):
            first, second = inputs(args, 2 * t)[i], inputs(args, 2 * t + 1)[i]
            result[f"in/{t}/{name}"] = first + second       # the float32 sum of the passes
    result["iterations"] = np.array(int(opt.iterations.numpy()))
    result["counter"] = np.array(int(opt._agg_helper.counter.numpy()))
    save(out, result)


def keras_loop(args, out):
    """A custom loop: the tape's own gradients to apply_gradients (exchanged
    there), backward_passes_per_step=2 without averaging, a local variable."""
    variables = make_variables()
    mine = tf.Variable(tf.zeros([3 + hvd.rank()]), name="mine")
    opt = DistributedOptimizer(tf.keras.optimizers.SGD(1.0), ScaleCom(**CFG),
                               backward_passes_per_step=2, num_groups=2)
    opt.register_local_var(mine)

    @tf.function
    def apply(grads, own):
        with tf.GradientTape() as tape:
            loss = linear_loss(variables + [mine], grads + [own])
        opt.apply_gradients(zip(tape.gradient(loss, variables + [mine]), variables + [mine]))

    result = {}
    for t in range(args.steps):
        owns = [gradient(args.seed, hvd.rank(), 2 * t + p, 9, mine.shape) for p in range(2)]
        passes = [inputs(args, 2 * t + p) for p in range(2)]
        for p in range(2):
            apply([tf.constant(g) for g in passes[p]], tf.constant(owns[p]))
            if p == 0:
                assert not any(v.numpy().any() for v in variables), "a first pass applied"
        for name, v, first, second in zip(SHAPES, variables, *passes):
            result[f"in/{t}/{name}"] = first + second
            result[f"out/{t}/{name}"] = np.float32(0) - v.numpy()
            v.assign(tf.zeros_like(v))
        result[f"local_in/{t}"] = owns[0] + owns[1]
        result[f"local_out/{t}"] = np.float32(0) - mine.numpy()
        mine.assign(tf.zeros_like(mine))
        result[f"groups/{t}"] = np.array(opt.scalecom_exchange.last_groups)
    result["iterations"] = np.array(int(opt.iterations.numpy()))
    save(out, result)


def refusals(args, out):
    """What the tape and the Keras optimizer say when built with what the ring
    cannot take (tests/workers/ring_refusals.py), on every rank."""
    from ring_refusals import tensorflow_refusals
    save(out, {"json": np.array(json.dumps(tensorflow_refusals()))})


CASES = {"num_groups": lambda a, o: tape_steps(a, o, num_groups=2), "refusals": refusals,
         "groups_list": groups_list, "sparse": sparse, "local": local,
         "keras_fit": keras_fit, "keras_loop": keras_loop}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("cases", help="comma-separated; each case writes to outdir/<case>")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    hvd.init()
    for case in args.cases.split(","):
        out = Path(args.outdir) / case
        out.mkdir(exist_ok=True)
        CASES[case](args, out)


if __name__ == "__main__":
    run(main, sys.argv[1])
