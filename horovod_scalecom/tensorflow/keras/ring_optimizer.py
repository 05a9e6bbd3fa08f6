"""The ring for Keras: a DistributedOptimizer (and PartialDistributedOptimizer)
with Horovod's Keras optimizer arguments and methods, whose compressible
gradients go through ScaleCom's compressed ring allreduce
(horovod_scalecom.tensorflow.ring_exchange).

As Horovod's, the wrapper is a subclass of the wrapped optimizer's class,
made from its config, and the gradients are exchanged where Horovod
exchanges them: in ``compute_gradients``/``_compute_gradients`` (what
``minimize`` and ``model.fit`` call). A custom loop that hands its own
tape's gradients to ``apply_gradients`` gets them exchanged there instead;
each step's gradients are exchanged once either way (twice would feed
averaged gradients into ScaleCom's memory).
"""

from __future__ import annotations

from typing import Any, Iterable

import tensorflow as tf
import horovod.tensorflow as hvd

from horovod_scalecom.ring_arguments import check_backward_passes
from horovod_scalecom.tensorflow.ring_aggregation import LocalAggregation
from horovod_scalecom.tensorflow.compression import ScaleCom
from horovod_scalecom.tensorflow.ring_tape import local_weights, refuse_unknown, ring_exchange

OURS = "horovod_scalecom.tensorflow.keras.DistributedOptimizer"
HOROVODS = "horovod.tensorflow.keras.DistributedOptimizer"


class _RingOptimizer:
    """The methods mixed into the wrapped optimizer's class (its ``_scalecom_settings``:
    the wrapper's arguments, shared by copies made with ``from_config``)."""

    _scalecom_settings: dict[str, Any] = {}

    def __init__(self, **config: Any) -> None:
        settings = self._scalecom_settings
        settings["base"].__init__(self, **config)
        self._name = settings["name"] or f"Distributed{settings['base'].__name__}"
        self.scalecom_exchange = ring_exchange(OURS, HOROVODS, **settings["exchange"])
        self.process_set = hvd.global_process_set
        self.scale_local_gradients = settings["exchange"]["scale_local_gradients"]
        self._local_vars: set = set()
        passes = settings["backward_passes_per_step"]
        # Horovod's attribute name, which Horovod's tests and some user code read.
        self._agg_helper = LocalAggregation(
            passes, settings["average_aggregated_gradients"],
            settings["exchange"]["sparse_as_dense"], OURS) if passes > 1 else None
        self._scalecom_exchanged = False   # compute_gradients exchanged; apply must not

    def register_local_var(self, var: tf.Variable) -> None:
        """As Horovod's: ``var``'s gradient stays on this rank (never in the ring
        nor in Horovod's allreduce), divided by the number of ranks with
        ``scale_local_gradients``."""
        self._local_vars.add(var.ref())

    def _scalecom_allreduce(self, grads: list, variables: list) -> list:
        """The step's gradients averaged (summed over the passes first with
        backward_passes_per_step)."""
        local = frozenset(self._local_vars)

        def exchange(summed: list) -> list:
            return self.scalecom_exchange.allreduce(summed, variables, local)

        if self._agg_helper is None:
            return exchange(list(grads))
        return self._agg_helper.gradients(list(grads), variables, exchange)

    def compute_gradients(self, loss, var_list, tape=None):
        return self._compute_gradients(loss, var_list, None, tape)

    def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
        """The wrapped optimizer's (loss, variable) gradients, exchanged."""
        base = super(self._scalecom_settings["cls"], self)
        tape = tf.GradientTape() if tape is None else tape
        if hasattr(base, "_compute_gradients"):      # Keras's legacy optimizers
            grads_and_vars = base._compute_gradients(loss, var_list, grad_loss, tape=tape)
        else:
            grads_and_vars = base.compute_gradients(loss, var_list, tape=tape)
        if not grads_and_vars:
            return []
        grads, variables = zip(*grads_and_vars)
        exchanged = self._scalecom_allreduce(list(grads), list(variables))
        self._scalecom_exchanged = True
        return list(zip(exchanged, variables))

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        """Applies the step's exchanged gradients; ones that did not come from
        compute_gradients are exchanged here first. With
        backward_passes_per_step, only the step's last pass applies; the
        others count ``iterations``, as Horovod's."""
        grads_and_vars = list(grads_and_vars)
        if not self._scalecom_exchanged:
            grads, variables = zip(*grads_and_vars) if grads_and_vars else ((), ())
            grads_and_vars = list(zip(self._scalecom_allreduce(list(grads), list(variables)),
                                      variables))
        self._scalecom_exchanged = False
        base = super(self._scalecom_settings["cls"], self)
        if self._agg_helper is None:
            return base.apply_gradients(grads_and_vars, *args, **kwargs)

        def apply() -> tf.Tensor:
            base.apply_gradients(grads_and_vars, *args, **kwargs)
            return tf.identity(self.iterations)

        def count() -> tf.Tensor:
            return tf.identity(self.iterations.assign_add(1))

        return tf.cond(self._agg_helper.ready(), apply, count)


def DistributedOptimizer(optimizer: tf.keras.optimizers.Optimizer, compression: ScaleCom, *,
                         name: str | None = None, device_dense: str = "",
                         device_sparse: str = "", sparse_as_dense: bool = False,
                         gradient_predivide_factor: float = 1.0, op: Any = hvd.Average,
                         backward_passes_per_step: int = 1,
                         average_aggregated_gradients: bool = False, num_groups: int = 0,
                         groups: Any = None, process_set: Any = None,
                         scale_local_gradients: bool = True,
                         **unexpected: Any) -> tf.keras.optimizers.Optimizer:
    """Wraps a Keras optimizer like ``horovod.tensorflow.keras.DistributedOptimizer``,
    averaging gradients with ScaleCom's compressed ring:

        opt = horovod_scalecom.tensorflow.keras.DistributedOptimizer(
            tf.keras.optimizers.SGD(0.1), compression=ScaleCom(ratio=0.01))
        model.compile(opt, ...)

    Horovod's arguments, with Horovod's meaning: ``backward_passes_per_step``
    (the passes summed locally, the sum exchanged once per step; divided by
    the passes with ``average_aggregated_gradients``), ``sparse_as_dense``,
    ``groups``/``num_groups``, ``device_dense``/``device_sparse``, ``name``,
    ``scale_local_gradients`` (see horovod_scalecom.tensorflow's
    DistributedGradientTape); ``register_local_var(var)`` keeps a variable's
    gradient on its rank. ``op`` must be hvd.Average,
    ``gradient_predivide_factor`` 1 and ``process_set`` the global one: the
    ring averages over every rank; anything else is refused here, naming
    Horovod's optimizer, which does it. Every ScaleCom knob is the
    ScaleCom's, ``share_timeout`` included.
    """
    refuse_unknown(OURS, unexpected)
    exchange = dict(compression=compression, op=op,
                    gradient_predivide_factor=gradient_predivide_factor,
                    process_set=process_set, num_groups=num_groups, groups=groups,
                    sparse_as_dense=sparse_as_dense, device_dense=device_dense,
                    device_sparse=device_sparse, scale_local_gradients=scale_local_gradients)
    # Checked now, on every rank, before any Keras object is made.
    ring_exchange(OURS, HOROVODS, **exchange)
    settings = {"base": optimizer.__class__, "name": name, "exchange": exchange,
                "backward_passes_per_step": check_backward_passes(OURS, backward_passes_per_step),
                "average_aggregated_gradients": average_aggregated_gradients}
    methods = {k: v for k, v in vars(_RingOptimizer).items()
               if k not in ("__dict__", "__weakref__", "__module__", "__qualname__")}
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               {**methods, "_scalecom_settings": settings})
    settings["cls"] = cls
    return cls.from_config(optimizer.get_config())


def PartialDistributedOptimizer(optimizer: tf.keras.optimizers.Optimizer,
                                compression: ScaleCom, *,
                                local_layers: Iterable[tf.keras.layers.Layer] | None = None,
                                **optimizer_arguments: Any) -> tf.keras.optimizers.Optimizer:
    """Horovod's PartialDistributedOptimizer with the ring: the trainable
    weights of ``local_layers`` are registered as local variables; the other
    arguments are DistributedOptimizer's."""
    weights = local_weights("horovod_scalecom.tensorflow.keras.PartialDistributedOptimizer",
                            local_layers)
    opt = DistributedOptimizer(optimizer, compression, **optimizer_arguments)
    for var in weights:
        opt.register_local_var(var)
    return opt
