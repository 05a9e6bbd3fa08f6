"""ScaleCom for TensorFlow + Horovod.

    import horovod.tensorflow as hvd
    from horovod_scalecom.tensorflow import ScaleCom

    compression = ScaleCom(ratio=0.01)
    tape = hvd.DistributedGradientTape(tape, compression=compression)

Importing this module loads horovod.tensorflow; never import horovod_scalecom.torch
in the same process.
"""

__all__ = ["ScaleCom", "DistributedGradientTape", "PartialDistributedGradientTape"]


def __getattr__(name: str):
    # Lazy, so that horovod_scalecom.tensorflow._ops (the bare kernels) loads without Horovod.
    if name == "ScaleCom":
        from horovod_scalecom.tensorflow.compression import ScaleCom
        return ScaleCom
    if name in ("DistributedGradientTape", "PartialDistributedGradientTape"):
        from horovod_scalecom.tensorflow import ring_tape
        return getattr(ring_tape, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
