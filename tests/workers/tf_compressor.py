"""mpirun worker: horovod.tensorflow with horovod_scalecom.tensorflow.ScaleCom.

usage: tf_compressor.py OUTDIR MODE [options]; see the modes below.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import horovod.tensorflow as hvd  # noqa: E402
import horovod.tensorflow.keras as hvd_keras  # noqa: E402
from horovod_scalecom.tensorflow import DistributedGradientTape, ScaleCom  # noqa: E402
from horovod_scalecom.tensorflow.keras import DistributedOptimizer, ScaleComCallback  # noqa: E402

from common import SHAPES, gradient, run  # noqa: E402

NAMES = [n.replace(".", "_") for n in SHAPES]


RING_SHAPES = {"a": (64, 48), "b": (37, 29), "bias": (64,), "c": (1000,)}


def feed(args, out, shapes, wrap):
    """Feed gradient(seed, rank, step, i) for `shapes` through the tape that
    `wrap(tape, compression)` returns; save the averaged gradients, the memory,
    the step counters, each step's stats() (JSON) and, for the ring, its bytes
    (the torch workers' layout). --stall-at S: rank 1 sleeps --stall seconds
    before step S."""
    variables = [tf.Variable(tf.zeros(shape), name=name) for name, shape in shapes.items()]
    compression = ScaleCom(ratio=args.ratio, beta=args.beta, warmup_steps=args.warmup,
                           min_numel=args.min_numel, clip_norm=args.clip or None,
                           clip_factor=args.clip_factor or None,
                           share_timeout=args.share_timeout)
    tapes = []

    def step(grads_in):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(v * g) for v, g in zip(variables, grads_in)])
        tape = wrap(tape, compression)
        tapes.append(tape)
        return tape.gradient(loss, variables)

    if args.function:
        step = tf.function(step)
    result = {}
    for t in range(args.steps):
        if t == args.stall_at and hvd.rank() == 1:
            time.sleep(args.stall)
        grads_in = [tf.constant(gradient(args.seed, hvd.rank(), t, i, shape, args.inject))
                    for i, shape in enumerate(shapes.values())]
        for name, g in zip(shapes, step(grads_in)):
            result[f"out/{t}/{name}"] = g.numpy()
        stats = compression.stats()
        result[f"nonfinite/{t}"] = np.array(stats["nonfinite_kept"])
        # The records by variable name (stats() keys them by position and shape).
        stats["tensors"] = {list(shapes)[int(key.split("|")[0])]: record
                            for key, record in stats["tensors"].items()}
        result[f"stats/{t}"] = np.array(json.dumps(stats))
        exchange = getattr(tapes[-1], "exchange", None)
        if exchange is not None:
            result[f"bytes/{t}"] = np.array(exchange.stats()["ring_bytes"])
    result["divergence"] = np.array(json.dumps(compression.stats()["divergence"]))
    for entry in compression.tensors():
        name = list(shapes)[entry["offset"]]
        result[f"mem/{name}"] = compression.memory[entry["key"]].numpy()
        result[f"step/{name}"] = np.array(compression.steps[entry["key"]].numpy())
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def sequence(args, out):
    """Horovod's DistributedGradientTape with ScaleCom as its compression."""
    feed(args, out, dict(zip(NAMES, SHAPES.values())),
         lambda tape, compression: hvd.DistributedGradientTape(tape, compression=compression))


def ring_sequence(args, out):
    """The ring: the worker of tests/test_ring.py, through horovod_scalecom's tape."""
    shapes = dict(RING_SHAPES, tiny=(3,)) if args.tiny else RING_SHAPES
    feed(args, out, shapes,
         lambda tape, compression: DistributedGradientTape(tape, compression=compression))


def ring_keras(args, out):
    """The ring with model.fit: horovod_scalecom.tensorflow.keras.DistributedOptimizer."""
    model = mlp()
    compression = ScaleCom(ratio=args.ratio, beta=args.beta, min_numel=args.min_numel)
    opt = DistributedOptimizer(tf.keras.optimizers.SGD(0.1, momentum=0.9), compression)
    model.compile(opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xs, ys = zip(*(data(args.seed, s) for s in range(args.steps)))
    model.fit(np.concatenate(xs), np.concatenate(ys), batch_size=16, epochs=2, shuffle=False,
              verbose=0)
    result = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    result["ring_bytes"] = np.array(opt.scalecom_exchange.last_bytes)
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def mlp():
    tf.keras.utils.set_random_seed(0)
    return tf.keras.Sequential([tf.keras.Input((32,)),
                                tf.keras.layers.Dense(64, activation="relu"),
                                tf.keras.layers.Dense(10)])


def data(seed, step):
    rng = np.random.default_rng([seed, hvd.rank(), step])
    return (rng.standard_normal((16, 32)).astype(np.float32),
            rng.integers(0, 10, 16).astype(np.int64))


def keras_fit(args, out):
    """model.fit with the Horovod Keras optimizer, ScaleCom and its callback."""
    model = mlp()
    compression = ScaleCom(ratio=args.ratio, beta=args.beta, min_numel=args.min_numel)
    opt = hvd_keras.DistributedOptimizer(tf.keras.optimizers.SGD(0.1, momentum=0.9),
                                         compression=compression)
    model.compile(opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xs, ys = zip(*(data(args.seed, s) for s in range(args.steps)))
    history = model.fit(np.concatenate(xs), np.concatenate(ys), batch_size=16, epochs=3,
                        shuffle=False, verbose=0,
                        callbacks=[ScaleComCallback(compression, warmup_epochs=1)])
    result = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    for key in ("scalecom_ratio", "scalecom_mb_per_step", "loss"):
        result[f"history/{key}"] = np.array(history.history[key])
    np.savez(out / f"rank{hvd.rank()}.npz", **result)


def tape_train(args, out):
    """A GradientTape loop in tf.function. --stop-at N: checkpoint after N steps
    and end the job; --start-at N --ckpt DIR: a new job that restores it."""

    def build():
        model = mlp()
        opt = tf.keras.optimizers.SGD(0.1, momentum=0.9)
        compression = ScaleCom(ratio=args.ratio, beta=args.beta, min_numel=args.min_numel,
                               warmup_steps=args.warmup)
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            if args.path == "horovod":
                tape = hvd.DistributedGradientTape(tape, compression=compression)
            else:
                tape = DistributedGradientTape(tape, compression=compression)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        ckpt = tf.train.Checkpoint(model=model, optimizer=opt, scalecom=compression)
        return model, train_step, ckpt

    model, train_step, ckpt = build()
    if args.start_at:       # a new job, from the checkpoint of an earlier one
        ckpt.read(str(Path(args.ckpt) / f"ckpt_rank{hvd.rank()}")
                  ).assert_existing_objects_matched()
    for s in range(args.start_at, args.stop_at or args.steps):
        if s == args.kill_at and hvd.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)    # a rank dies mid-run, no goodbye
        train_step(*data(args.seed, s))
    if args.stop_at:
        ckpt.write(str(out / f"ckpt_rank{hvd.rank()}"))
        return
    np.savez(out / f"rank{hvd.rank()}.npz",
             **{f"w{i}": w for i, w in enumerate(model.get_weights())})


def bad(args, out):
    if args.case == "ratio":
        ScaleCom(ratio=args.ratio)
    elif args.case == "beta":
        ScaleCom(beta=args.beta)
    elif args.case == "eager":
        hvd.allreduce(tf.ones([4000]), compression=ScaleCom(min_numel=0))
    elif args.case == "callback":
        ScaleComCallback(hvd.Compression.none)
    elif args.case == "clip":
        ScaleCom(clip_norm=0)
    elif args.case == "share_timeout":
        ScaleCom(share_timeout=-1.0)
    elif args.case == "ring_arguments":
        with tf.GradientTape() as tape:
            pass
        DistributedGradientTape(tape, ScaleCom(), op=hvd.Sum)
    elif args.case == "ring_timeout":
        # The ring's own timeout before ScaleCom held share_timeout.
        with tf.GradientTape() as tape:
            pass
        DistributedGradientTape(tape, ScaleCom(), timeout=5.0)
    elif args.case == "keras_ring_timeout":
        DistributedOptimizer(tf.keras.optimizers.SGD(0.1), ScaleCom(), timeout=5.0)
    elif args.case == "graph_mode":
        tf.compat.v1.disable_eager_execution()     # TF1 sessions
        ScaleCom()
    elif args.case == "disagree":
        # Rank 1 builds ScaleCom with another beta, no relative clip (and, with
        # --clip, no clip_norm).
        args.beta = args.beta if hvd.rank() == 0 else 0.3
        args.clip = args.clip if hvd.rank() == 0 else 0.0
        args.clip_factor = args.clip_factor if hvd.rank() == 0 else 0.0
        args.steps = 2
        wrap = (lambda tape, compression: hvd.DistributedGradientTape(
            tape, compression=compression)) if args.path == "horovod" else (
            lambda tape, compression: DistributedGradientTape(tape, compression))
        feed(args, out, dict(zip(NAMES, SHAPES.values())), wrap)
    elif args.case == "two_models":
        # One ScaleCom for two tapes over different variable lists (a GAN's
        # generator and discriminator steps, say).
        compression = ScaleCom(min_numel=0)
        models = [[tf.Variable(tf.ones([64, 32]))], [tf.Variable(tf.ones([16, 8]))]]
        for step in range(2):
            variables = models[step]
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(variables[0] * variables[0])
            if args.path == "horovod":
                tape = hvd.DistributedGradientTape(tape, compression=compression)
            else:
                tape = DistributedGradientTape(tape, compression=compression)
            tape.gradient(loss, variables)
    raise AssertionError(f"case {args.case} raised nothing")


# The bad values of the refusals that bad_each runs (the others need none).
BAD_VALUES = {"ratio": {"ratio": 0.0}, "beta": {"beta": 1.5}}


def bad_each(args, out):
    """Refusals raised on each rank before any collective, several in one job:
    each case's error (or "raised nothing") in out/<case>/rank<r>.err."""
    for case in args.case.split(","):
        case_out = out / case
        case_out.mkdir(exist_ok=True)
        case_args = argparse.Namespace(**{**vars(args), "case": case, **BAD_VALUES.get(case, {})})
        try:
            bad(case_args, case_out)
            message = "the case raised nothing"
        except Exception as exc:  # noqa: BLE001 - the message is what the test checks
            message = f"{type(exc).__name__}: {exc}"
        (case_out / f"rank{hvd.rank()}.err").write_text(message + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("mode", choices=["sequence", "keras", "tape", "bad", "bad_each", "ring_sequence",
                                         "ring_keras"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--min-numel", type=int, default=100)
    parser.add_argument("--function", action="store_true")
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--start-at", type=int, default=0)
    parser.add_argument("--ckpt", default="")
    parser.add_argument("--case", default="")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--path", choices=["horovod", "ring"], default="horovod")
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--inject", action="store_true", help="NaN/Inf in one gradient")
    parser.add_argument("--clip", type=float, default=0.0, help="ScaleCom(clip_norm=...)")
    parser.add_argument("--clip-factor", type=float, default=2.0, help="0: clip_factor=None")
    parser.add_argument("--share-timeout", type=float, default=120.0)
    parser.add_argument("--stall-at", type=int, default=-1, help="rank 1 sleeps before this step")
    parser.add_argument("--stall", type=float, default=60.0)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    hvd.init()
    out = Path(args.outdir)
    modes = {"sequence": sequence, "keras": keras_fit, "tape": tape_train, "bad": bad,
             "bad_each": bad_each, "ring_sequence": ring_sequence, "ring_keras": ring_keras}
    modes[args.mode](args, out)


if __name__ == "__main__":
    run(main, sys.argv[1])
