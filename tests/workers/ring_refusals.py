"""What each ring wrapper of one framework says when it is built with an
argument the ring cannot take: per wrapper and case, the exception's type
and message with the wrapper's own name and Horovod's replaced by <ring> and
<horovod>, so that the frameworks' words can be compared
(tests/test_tf_ring.py). torch's run as this script, one rank without
mpirun (prints ``REFUSALS {json}``); TensorFlow's in tests/workers/tf_ring.py's
job (its ``refusals`` case).

usage: ring_refusals.py torch|tensorflow
"""

import json
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# A process set other than the global one (the wrappers read its id only).
OTHER_SET = SimpleNamespace(process_set_id=1)


def cases(hvd):
    """case -> the keyword arguments that the ring refuses."""
    return {"op_sum": {"op": hvd.Sum}, "op_adasum": {"op": hvd.Adasum},
            "predivide": {"gradient_predivide_factor": 2.0},
            "both_groups": {"num_groups": 2, "groups": 2},
            "process_set": {"process_set": OTHER_SET},
            "passes": {"backward_passes_per_step": 0},
            "no_compression": {"compression": None},
            "other_compression": {"compression": hvd.Compression.fp16}}


def refusal(build, kwargs, names):
    try:
        build(**kwargs)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        for name, placeholder in names:
            text = text.replace(name, placeholder)
        return f"{type(exc).__name__}: {text}"
    return "raised nothing"


def torch_refusals():
    import torch
    import horovod.torch as hvd
    from horovod_scalecom.torch import DistributedOptimizer, ScaleCom
    hvd.init()
    model = torch.nn.Linear(4, 3)

    def build(**kwargs):
        kwargs.setdefault("compression", ScaleCom(model))
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                             named_parameters=model.named_parameters(), **kwargs)

    names = [("horovod_scalecom.torch.DistributedOptimizer", "<ring>"),
             ("hvd.DistributedOptimizer", "<horovod>")]
    return {"torch": {case: refusal(build, kw, names) for case, kw in cases(hvd).items()}}


def tensorflow_refusals():
    import tensorflow as tf
    import horovod.tensorflow as hvd
    from horovod_scalecom.tensorflow import DistributedGradientTape, ScaleCom
    from horovod_scalecom.tensorflow.keras import DistributedOptimizer
    hvd.init()

    def keras(**kwargs):
        kwargs.setdefault("compression", ScaleCom())
        DistributedOptimizer(tf.keras.optimizers.SGD(0.1), **kwargs)

    def tape(**kwargs):
        kwargs.setdefault("compression", ScaleCom())
        with tf.GradientTape() as plain:
            pass
        DistributedGradientTape(plain, **kwargs)

    out = {}
    for wrapper, build, names in [
            ("keras", keras, [("horovod_scalecom.tensorflow.keras.DistributedOptimizer", "<ring>"),
                              ("horovod.tensorflow.keras.DistributedOptimizer", "<horovod>")]),
            ("tape", tape, [("horovod_scalecom.tensorflow.DistributedGradientTape", "<ring>"),
                            ("hvd.DistributedGradientTape", "<horovod>")])]:
        out[wrapper] = {case: refusal(build, kw, names) for case, kw in cases(hvd).items()
                        if wrapper == "keras" or case != "passes"}   # a tape has no passes
    return out


if __name__ == "__main__":
    found = torch_refusals() if sys.argv[1] == "torch" else tensorflow_refusals()
    print("REFUSALS " + json.dumps(found))
