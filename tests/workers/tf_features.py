"""mpirun worker: Horovod's DistributedGradientTape features with ScaleCom (TF).

usage: tf_features.py OUTDIR CASE [--steps N]

The layout of tests/workers/torch_features.py: per step, ``in/{step}/{name}``
(the gradient this rank handed over) and ``out/{step}/{name}`` (the exchange's
result). Cases: ``sum`` (op=hvd.Sum), ``process_set`` (ranks 0..n-2),
``sparse`` (tf.gather's IndexedSlices with sparse_as_dense=True), ``order``
(each rank holds back the gradient of another variable for 0.3 s, so the
ranks hand their gradients over in different orders).
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["HOROVOD_DYNAMIC_PROCESS_SETS"] = "1"    # hvd.add_process_set after init

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import horovod.tensorflow as hvd  # noqa: E402
from horovod_scalecom.tensorflow import ScaleCom  # noqa: E402

from common import SHAPES, gradient, run  # noqa: E402

NAMES = [n.replace(".", "_") for n in SHAPES]
CFG = dict(ratio=0.05, beta=0.1, min_numel=100)


def held_back(x):
    """The identity, whose gradient arrives 0.3 s late."""
    @tf.custom_gradient
    def identity(v):
        def grad(dy):
            late = tf.py_function(lambda d: (time.sleep(0.3), d)[1], [dy], Tout=dy.dtype)
            return tf.ensure_shape(late, dy.shape)
        return tf.identity(v), grad
    return identity(x)


def dense_steps(args, out, members, compression, held=None, **tape_kw):
    """``held``: the index of the variable whose gradient this rank hands over last."""
    variables = [tf.Variable(tf.zeros(shape), name=name) for name, shape in zip(NAMES, SHAPES.values())]
    rank = hvd.rank()

    @tf.function
    def step(grads_in):
        with tf.GradientTape() as tape:
            used = [held_back(v) if i == held else v for i, v in enumerate(variables)]
            loss = tf.add_n([tf.reduce_sum(v * g) for v, g in zip(used, grads_in)])
        tape = hvd.DistributedGradientTape(tape, compression=compression, **tape_kw)
        return tape.gradient(loss, variables)

    result = {}
    for t in range(args.steps):
        grads_in = [gradient(args.seed, rank, t, i, shape) for i, shape in enumerate(SHAPES.values())]
        if rank not in members:
            continue
        for name, g_in, g in zip(NAMES, grads_in, step([tf.constant(g) for g in grads_in])):
            result[f"in/{t}/{name}"] = g_in
            result[f"out/{t}/{name}"] = g.numpy()
    np.savez(out / f"rank{rank}.npz", **result)


def keras_bpps(args, out):
    """Keras DistributedOptimizer with backward_passes_per_step=2: Horovod sums
    two passes locally, then ScaleCom and the allreduce run on that sum, on
    the second pass of each step (SGD with lr 1 from zero: -variable is the
    exchange's result)."""
    import horovod.tensorflow.keras as hvd_keras
    variables = [tf.Variable(tf.zeros(shape), name=name) for name, shape in zip(NAMES, SHAPES.values())]
    opt = hvd_keras.DistributedOptimizer(tf.keras.optimizers.legacy.SGD(1.0),
                                         compression=ScaleCom(**CFG), backward_passes_per_step=2)

    @tf.function
    def apply(grads):
        # minimize(), as Keras's train step: Horovod 0.28.1 aggregates in its
        # _compute_gradients. (apply_gradients() called directly applies each
        # rank's local sum and drops the allreduce, with or without ScaleCom.)
        def loss():
            return tf.add_n([tf.reduce_sum(v * g) for v, g in zip(variables, grads)])
        opt.minimize(loss, variables)

    rank, result = hvd.rank(), {}
    for t in range(args.steps):
        passes = [[gradient(args.seed, rank, 2 * t + p, i, shape)
                   for i, shape in enumerate(SHAPES.values())] for p in range(2)]
        for v in variables:
            v.assign(tf.zeros_like(v))
        for grads in passes:
            apply([tf.constant(g) for g in grads])
        for name, v, first, second in zip(NAMES, variables, *passes):
            result[f"in/{t}/{name}"] = first + second     # Horovod's local sum, float32
            result[f"out/{t}/{name}"] = np.float32(0) - v.numpy()   # +0.0, not -0.0, off the indices
    np.savez(out / f"rank{rank}.npz", **result)


def sparse(args, out):
    table = tf.Variable(tf.zeros([300, 16]), name="table")
    compression = ScaleCom(**CFG)

    @tf.function
    def step(rows, weight):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, rows) * weight)
        tape = hvd.DistributedGradientTape(tape, compression=compression, sparse_as_dense=True)
        return tape.gradient(loss, [table])[0]

    result = {}
    for t in range(args.steps):
        rows = np.random.default_rng([t, hvd.rank()]).permutation(300)[:40]
        weight = gradient(args.seed, hvd.rank(), t, 0, (40, 16))
        dense = np.zeros((300, 16), np.float32)
        dense[rows] = weight        # distinct rows: the densified gradient exactly
        g = step(tf.constant(rows), tf.constant(weight))
        result[f"in/{t}/table"] = dense
        result[f"out/{t}/table"] = tf.convert_to_tensor(g).numpy()
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def one_case(case, args, out):
    if case == "sparse":
        sparse(args, out)
    elif case == "keras_bpps":
        keras_bpps(args, out)
    elif case == "process_set":
        members = list(range(hvd.size() - 1))
        ps = hvd.add_process_set(members)
        dense_steps(args, out, members, ScaleCom(**CFG, process_set=ps), process_set=ps)
        hvd.remove_process_set(ps)
    elif case == "sum":
        dense_steps(args, out, range(hvd.size()), ScaleCom(**CFG), op=hvd.Sum)
    elif case == "predivide":
        dense_steps(args, out, range(hvd.size()), ScaleCom(**CFG), gradient_predivide_factor=2.0)
    elif case == "order":
        held = [0, len(NAMES) - 1, 2][hvd.rank() % 3]     # compressed tensors
        dense_steps(args, out, range(hvd.size()), ScaleCom(**CFG), held=held)
    elif case == "groups":
        dense_steps(args, out, range(hvd.size()), ScaleCom(**CFG), num_groups=2)
    elif case in ("refuse_adasum", "refuse_min"):
        op = hvd.Adasum if case == "refuse_adasum" else hvd.Min
        dense_steps(args, out, range(hvd.size()), ScaleCom(**CFG), op=op)
        raise AssertionError("the step raised nothing")
    elif case == "refuse_ps_tape":
        ps = hvd.add_process_set([0, 1])
        dense_steps(args, out, [0, 1], ScaleCom(**CFG), process_set=ps)
        if hvd.rank() in (0, 1):
            raise AssertionError("the step raised nothing")
        # Rank 2 waits here (collective) instead of exiting, which would shut
        # Horovod down under ranks 0 and 1 before they reach the refusal.
        hvd.remove_process_set(ps)
    else:
        raise ValueError(f"unknown case {case}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("cases", help="comma-separated; each case writes to outdir/<case>")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hvd.init()
    # Several cases in one job: TensorFlow's and Horovod's start-up, not the
    # cases, is most of a job's time.
    for case in args.cases.split(","):
        out = Path(args.outdir) / case
        out.mkdir(exist_ok=True)
        one_case(case, args, out)


if __name__ == "__main__":
    run(main, sys.argv[1])
