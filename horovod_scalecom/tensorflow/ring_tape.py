"""The compressed ring allreduce (horovod_scalecom._ring) for TensorFlow,
behind a DistributedGradientTape (and PartialDistributedGradientTape) with
Horovod's tape arguments and methods; .keras has the DistributedOptimizer.

The exchange itself is horovod_scalecom.tensorflow.ring_exchange's. What
the ring cannot do is refused when the tape is built, in the PyTorch ring's
words (horovod_scalecom.ring_arguments): ``op`` other than hvd.Average,
``gradient_predivide_factor`` other than 1, a ``process_set`` other than
the global one, Horovod on Gloo or under Elastic.
"""

from __future__ import annotations

from typing import Any, Iterable

import tensorflow as tf
import horovod.tensorflow as hvd

from horovod_scalecom.ring import refuse_without_mpi
from horovod_scalecom.ring_arguments import (
    check_groups, refuse_op, refuse_predivide, refuse_process_set, require_scalecom)
from horovod_scalecom.tensorflow.compression import ScaleCom
from horovod_scalecom.tensorflow.ring_exchange import RingExchange, source_ref

TAPE = "horovod_scalecom.tensorflow.DistributedGradientTape"


def refuse_unknown(ours: str, given: dict[str, Any]) -> None:
    """A keyword the wrapper does not take is refused as Python would, except
    ``timeout=``, which the ring's wrappers took before the ScaleCom held
    every knob: it is refused with where it went (silently dropped, a
    caller's shorter timeout would leave a stalled job hanging for the
    default)."""
    if "timeout" in given:
        raise TypeError(f"{ours} does not take timeout: the ring waits the ScaleCom's "
                        "share_timeout for the other ranks; pass "
                        "compression=ScaleCom(share_timeout=...) instead")
    if given:
        raise TypeError(f"{ours} got an unexpected keyword argument {sorted(given)[0]!r}")


def ring_exchange(ours: str, horovods: str, compression: Any, *, op: Any,
                  gradient_predivide_factor: float, process_set: Any, num_groups: int,
                  groups: Any, sparse_as_dense: bool, device_dense: str, device_sparse: str,
                  scale_local_gradients: bool) -> RingExchange:
    """The exchange of a ring wrapper (``ours``; ``horovods``: Horovod's, the
    alternative named in each refusal), once Horovod's arguments are checked:
    those the ring cannot honour are refused here, when it is built."""
    require_scalecom(ours, horovods, compression, ScaleCom)
    refuse_op(ours, horovods, hvd, op)
    refuse_predivide(ours, horovods, gradient_predivide_factor)
    refuse_process_set(ours, horovods,
                       None if process_set is None else process_set.process_set_id,
                       compression.process_set.process_set_id)
    refuse_without_mpi(ours, horovods, hvd.size(), hvd.mpi_enabled())
    return RingExchange(compression, ours, sparse_as_dense=sparse_as_dense,
                        groups=check_groups(ours, num_groups, groups),
                        device_dense=device_dense, device_sparse=device_sparse,
                        scale_local_gradients=scale_local_gradients)


class DistributedGradientTape(tf.GradientTape):
    """``hvd.DistributedGradientTape`` whose compressible gradients go through
    ScaleCom's compressed ring allreduce:

        tape = horovod_scalecom.tensorflow.DistributedGradientTape(
            tape, compression=ScaleCom(ratio=0.01))
        grads = tape.gradient(loss, model.trainable_variables)

    Horovod's tape arguments, with Horovod's meaning: ``sparse_as_dense``
    (IndexedSlices densified and compressed in the ring; without it they go
    through Horovod's sparse allreduce, uncompressed, with a warning),
    ``groups``/``num_groups`` (the ring's fused messages, which change no
    number), ``device_dense``/``device_sparse`` (Horovod's allreduces of the
    gradients that do not go through the ring), ``scale_local_gradients``
    (the gradients of ``register_local_source``'s sources divided by the
    number of ranks). ``op`` must be hvd.Average, ``gradient_predivide_factor``
    1 and ``process_set`` the global one: the ring averages over every rank;
    anything else is refused here, naming Horovod's tape, which does it.
    Every ScaleCom knob is the ScaleCom's, ``share_timeout`` (the ring's wait
    for the other ranks) included.
    """

    def __init__(self, gradtape: tf.GradientTape, compression: ScaleCom, *,
                 device_dense: str = "", device_sparse: str = "", sparse_as_dense: bool = False,
                 op: Any = hvd.Average, gradient_predivide_factor: float = 1.0,
                 num_groups: int = 0, groups: Any = None, process_set: Any = None,
                 scale_local_gradients: bool = True, **unexpected: Any) -> None:
        refuse_unknown(TAPE, unexpected)
        self._exchange = ring_exchange(
            TAPE, "hvd.DistributedGradientTape", compression, op=op,
            gradient_predivide_factor=gradient_predivide_factor, process_set=process_set,
            num_groups=num_groups, groups=groups, sparse_as_dense=sparse_as_dense,
            device_dense=device_dense, device_sparse=device_sparse,
            scale_local_gradients=scale_local_gradients)
        super().__init__(gradtape._persistent, gradtape._watch_accessed_variables)
        self._tape = gradtape._tape
        self._recording = gradtape._recording
        self._local_sources: set = set()

    @property
    def exchange(self) -> RingExchange:
        """The ring exchange behind this tape; ``tape.exchange.stats()``."""
        return self._exchange

    def register_local_source(self, source: tf.Variable) -> None:
        """As Horovod's: ``source``'s gradient stays on this rank (never in the
        ring nor in Horovod's allreduce; model-parallel variables, which may
        differ in shape from rank to rank), divided by the number of ranks
        with ``scale_local_gradients``."""
        self._local_sources.add(source.ref())

    def gradient(self, target, sources, output_gradients=None, use_generic_names: bool = False,
                 **kwargs):
        """The tape's gradients averaged over every rank (local sources'
        kept). ``use_generic_names`` is Horovod's: this tape names its
        Horovod allreduces by position on every rank whatever it is."""
        grads = super().gradient(target, sources, output_gradients, **kwargs)
        flat = self._exchange.allreduce(tf.nest.flatten(grads), tf.nest.flatten(sources),
                                        frozenset(self._local_sources))
        return tf.nest.pack_sequence_as(grads, flat)

    def get_local_and_global_gradients(self, target, sources, output_gradients=None,
                                       use_generic_names: bool = False):
        """As Horovod's: ([(source, gradient)] of the local sources,
        [(source, gradient)] of the others), from one ``gradient()``."""
        flat_sources = tf.nest.flatten(sources)
        grads = tf.nest.flatten(self.gradient(target, sources, output_gradients))
        local, exchanged = [], []
        for s, g in zip(flat_sources, grads):
            (local if source_ref(s) in self._local_sources else exchanged).append((s, g))
        return local, exchanged


def PartialDistributedGradientTape(gradtape: tf.GradientTape, compression: ScaleCom, *,
                                   local_layers: Iterable[tf.keras.layers.Layer] | None = None,
                                   **tape_arguments: Any) -> DistributedGradientTape:
    """Horovod's PartialDistributedGradientTape with the ring: the trainable
    weights of ``local_layers`` are registered as local sources; the other
    arguments are DistributedGradientTape's."""
    weights = local_weights("horovod_scalecom.tensorflow.PartialDistributedGradientTape",
                            local_layers)
    tape = DistributedGradientTape(gradtape, compression, **tape_arguments)
    for var in weights:
        tape.register_local_source(var)
    return tape


def local_weights(ours: str, local_layers: Any) -> list:
    """The trainable weights of Horovod's ``local_layers`` argument (None, a
    Keras layer or layers), which the Partial wrappers keep out of the ring."""
    if local_layers is None:
        local_layers = []
    elif isinstance(local_layers, tf.keras.layers.Layer):
        local_layers = [local_layers]
    local_layers = list(local_layers)
    if not all(isinstance(layer, tf.keras.layers.Layer) for layer in local_layers):
        raise ValueError(f"{ours}: local_layers must be tf.keras.layers.Layer objects")
    return [var for layer in local_layers for var in layer.trainable_weights]
