"""ScaleCom gradient compression for Horovod.

ScaleCom (Chen et al., NeurIPS 2020) = CLT-k + a low-pass filter on the
error-feedback memory:

* CLT-k: at step t a cyclic leader picks the top-k indices of its
  memory-accumulated gradient ``p = m + g``; every worker sends its own ``p``
  at those same indices, so an ordinary allreduce of k values is exact.
* Low-pass filter: ``m <- (1 - beta) m + beta (p - scatter(I, p[I]))``.

This top-level package is framework-free. The framework frontends live in
``horovod_scalecom.torch`` and ``horovod_scalecom.tensorflow``; import only the
one you train with (each brings its own Horovod core).
"""

from horovod_scalecom.config import ScaleComConfig, num_selected

__version__ = "0.1.0"
__all__ = ["ScaleComConfig", "num_selected", "__version__"]
