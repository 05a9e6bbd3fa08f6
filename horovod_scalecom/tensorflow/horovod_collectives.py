"""The Horovod collectives of the TensorFlow exchange, besides the values'
allreduce that Horovod itself runs: the world as graph ops, the leader's
indices, and the ranks' agreement on the knobs.

Kept apart from compression.py because these are the only places where the
TensorFlow frontend talks to other ranks on its own."""

from __future__ import annotations

import tensorflow as tf
import horovod.tensorflow as hvd

from horovod_scalecom.config import AGREED, ScaleComConfig, disagreement_error
from horovod_scalecom.tensorflow.registry import TensorEntry

# How the leaders' indices travel (stats()["index_share"]).
INDEX_SHARE = "horovod allgather"
# Under the ScaleCom ring no indices travel alone: each chunk's owner selects.
RING_INDEX_SHARE = "none (the ring's chunk owners select)"


def world(process_set: hvd.ProcessSet) -> tuple[tf.Tensor, tf.Tensor]:
    """The process set's size and this rank in it, as ops read when the graph
    runs, not when it is traced: a traced step stays right after Horovod
    Elastic changes the world. Horovod's rank op knows only the global set; a
    process set's members do not change (Elastic runs over every rank)."""
    size = hvd.size_op(process_set_id=process_set.process_set_id)
    if process_set.process_set_id == 0:
        return size, hvd.rank_op()
    return size, tf.constant(process_set.rank(), tf.int32)


def share_indices(mine: tf.Tensor, entry: TensorEntry,
                  process_set: hvd.ProcessSet) -> tf.Tensor:
    """The leader's k indices on every rank: an allgather to which only the
    leader contributes (``mine`` is empty elsewhere). A broadcast would fix
    its root when the op is built (one op per possible root, a branch picked
    at run time, and a traced step tied to the world it was traced in). Two
    ranks that both thought themselves leader would give 2k indices: refused
    by the shape check, never paired silently."""
    # "HorovodAllgather" in the name: hvd.elastic.run turns a failed op into
    # HorovodInternalError (and so a restore) only for Horovod's names.
    shared = hvd.allgather(mine, process_set=process_set,
                           name=f"HorovodAllgather_{entry.op_name}_indices")
    return tf.ensure_shape(shared, [entry.k])


def check_agreement(config: ScaleComConfig, process_set: hvd.ProcessSet) -> None:
    """Raises on every rank, with each rank's values, unless all ranks of
    ``process_set`` run the same knobs (config.AGREED). Eager: call it under
    tf.init_scope when tracing."""
    every = hvd.allgather(tf.constant([config.agreement_row()], tf.float64),
                          name="scalecom_config", process_set=process_set).numpy()
    error = disagreement_error(AGREED, every)
    if error is not None:
        raise error
