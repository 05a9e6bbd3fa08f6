"""One process: an Elastic restore of a snapshot taken before the first trace
puts every ScaleCom variable made since back where it started.

usage: tf_restore.py OUTDIR
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import horovod.tensorflow as hvd  # noqa: E402
from horovod_scalecom.tensorflow import ScaleCom  # noqa: E402

from common import run  # noqa: E402


def main():
    hvd.init()
    compression = ScaleCom(min_numel=16)
    before = compression.snapshot()
    v = tf.Variable(tf.ones([4000]))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(v * x)
        return hvd.DistributedGradientTape(tape, compression=compression).gradient(loss, [v])

    for _ in range(3):
        step(tf.random.normal([4000]))
    assert len(compression.variables) > len(before)
    assert any(int(s.numpy()) == 3 for s in compression.steps.values())
    compression.restore(before)
    for s in compression.steps.values():
        assert int(s.numpy()) == 0, int(s.numpy())
    for m in compression.memory.values():
        assert not np.any(m.numpy()), "memory not back to zero"
    for w in compression.watch.values():
        assert np.isnan(w.level.numpy()), w.level.numpy()


if __name__ == "__main__":
    run(main, sys.argv[1])
