"""The figures of an exchange's last step, under the same keys for every
torch exchange that runs tensor by tensor (the Horovod compressor, the DDP hook)."""

from __future__ import annotations

from typing import Any, Optional

from horovod_scalecom import bytes_model
from horovod_scalecom.torch.watch import Watch


def new_record(numel: int, k: Optional[int], lead: Optional[int], step: int, size: int,
               **figures: Any) -> dict[str, Any]:
    """One tensor's record of one exchange: ``k`` None for a dense one; bytes
    by DESIGN.md's byte model (the index share and a ring allreduce of k
    values, or a dense ring allreduce); timings zero until ``figures`` or
    the caller fill them in."""
    dense = bytes_model.dense_ring_allreduce(numel, size)
    return {"numel": numel, "k": k, "leader": lead, "step": step,
            "bytes_sent": dense if k is None else bytes_model.path_a(k, size),
            "dense_bytes": dense, "nonfinite_kept": 0, "select_s": 0.0, "update_s": 0.0,
            "decompress_s": 0.0, **figures}


def last_step(last: dict[str, dict[str, Any]], watch: Watch) -> dict[str, Any]:
    """Totals over the tensors' records of their last exchange, and the records.

    Each record holds ``bytes_sent`` and ``dense_bytes`` (DESIGN.md's byte
    model), ``select_s``, ``update_s``, ``clip_s``, ``decompress_s``,
    ``nonfinite_kept`` (an int, or a device tensor read here) and ``clip_scale``.
    """
    tensors = {name: {**v, "nonfinite_kept": int(v["nonfinite_kept"])}
               for name, v in list(last.items())}
    total = lambda key: sum(v.get(key, 0.0) for v in tensors.values())  # noqa: E731
    sent, dense = total("bytes_sent"), total("dense_bytes")
    return {
        "bytes_sent": sent,
        "dense_bytes": dense,
        "compression": dense / sent if sent else 1.0,
        "select_s": total("select_s"),
        "update_s": total("update_s"),
        "clip_s": total("clip_s"),
        # Writing the dense mean back (the scatter), after the allreduce.
        "decompress_s": total("decompress_s"),
        # Memory entries that refused a NaN/Inf update (DESIGN's non-finite policy).
        "nonfinite_kept": total("nonfinite_kept"),
        # Tensors whose gradient the relative clip scaled down at their last step.
        "clipped": sum(1 for v in tensors.values() if v.get("clip_scale", 1.0) < 1.0),
        # The divergence guard's first event per tensor (horovod_scalecom.guard).
        "divergence": watch.stats(),
        "tensors": tensors,
    }
