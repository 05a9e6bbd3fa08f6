"""ScaleCom for PyTorch + Horovod.

    import horovod.torch as hvd
    from horovod_scalecom.torch import ScaleCom

    compression = ScaleCom(model, ratio=0.01)
    optimizer = hvd.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(), compression=compression)

Importing this module loads horovod.torch; never import horovod_scalecom.tensorflow
in the same process.
"""

__all__ = ["ScaleCom", "DistributedOptimizer", "clip_before_exchange"]


def __getattr__(name: str):
    # Lazy, so that horovod_scalecom.torch._ops (the bare kernels) loads without Horovod.
    if name == "ScaleCom":
        from horovod_scalecom.torch.horovod_path import ScaleCom
        return ScaleCom
    if name == "DistributedOptimizer":
        from horovod_scalecom.torch.ring_optimizer import DistributedOptimizer
        return DistributedOptimizer
    if name == "clip_before_exchange":
        from horovod_scalecom.torch.clipping import clip_before_exchange
        return clip_before_exchange
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
