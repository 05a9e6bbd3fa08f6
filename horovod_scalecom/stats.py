"""The figures of an exchange's last step, under the same keys in every
frontend that exchanges tensor by tensor (the torch and TensorFlow Horovod
compressors, the DDP hook).

``stats()`` returns the totals below and, under ``"tensors"``, one record
per tensor of its last exchange:

=================  =====================================================
key                meaning
=================  =====================================================
bytes_sent         bytes this rank sent, by the byte model (docs/algorithm.md)
dense_bytes        what a dense ring allreduce of the same tensors sends
compression        dense_bytes / bytes_sent
select_s           seconds in the leader's top-k selection
share_s            seconds sharing the indices (the wait for the leader)
update_s           seconds gathering the values and updating the memory
clip_s             seconds in the relative clip
decompress_s       seconds writing the mean back (the scatter)
nonfinite_kept     memory entries that refused a NaN/Inf update
clipped            tensors whose gradient the relative clip scaled down
divergence         the divergence guard's events (horovod_scalecom.guard)
index_share        how the leaders' indices travel
tensors            the per-tensor records (numel, k, leader, step, the
                   figures above, grad_norm, clip_scale)
=================  =====================================================

A record's ``k`` is None when the tensor went dense at that exchange. The
timings are None where the frontend cannot take them: TensorFlow runs the
exchange as graph ops.
"""

from __future__ import annotations

from typing import Any, Optional

from horovod_scalecom import bytes_model

TIMINGS = ("select_s", "share_s", "update_s", "clip_s", "decompress_s")


def new_record(numel: int, k: Optional[int], lead: Optional[int], step: int, size: int,
               timed: bool = True, **figures: Any) -> dict[str, Any]:
    """One tensor's record of one exchange: ``k`` None for a dense one; bytes
    by the byte model of docs/algorithm.md (the index share and a ring allreduce of k
    values, or a dense ring allreduce); timings zero until ``figures`` or
    the caller fill them in (None when not ``timed``)."""
    dense = bytes_model.dense_ring_allreduce(numel, size)
    zero = 0.0 if timed else None
    return {"numel": numel, "k": k, "leader": lead, "step": step,
            "bytes_sent": dense if k is None else bytes_model.horovod_path(k, size),
            "dense_bytes": dense, "nonfinite_kept": 0, "grad_norm": None, "clip_scale": 1.0,
            **{key: zero for key in TIMINGS}, **figures}


def last_step(last: dict[str, dict[str, Any]], divergence: dict[str, Any],
              index_share: str) -> dict[str, Any]:
    """Totals over the tensors' records of their last exchange, and the
    records (``nonfinite_kept`` may be a device tensor: read here)."""
    tensors = {name: {**v, "nonfinite_kept": int(v["nonfinite_kept"])}
               for name, v in list(last.items())}

    def total(key: str):
        values = [v.get(key) for v in tensors.values()]
        return None if None in values else sum(values)

    sent, dense = total("bytes_sent"), total("dense_bytes")
    return {
        "bytes_sent": sent,
        "dense_bytes": dense,
        "compression": dense / sent if sent else 1.0,
        **{key: total(key) if tensors else 0.0 for key in TIMINGS},
        "nonfinite_kept": total("nonfinite_kept"),
        "clipped": sum(1 for v in tensors.values() if v.get("clip_scale", 1.0) < 1.0),
        "divergence": divergence,
        "index_share": index_share,
        "tensors": tensors,
    }
