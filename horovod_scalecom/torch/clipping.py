"""Per-worker gradient clipping before compression: the remedy for the hard
regime of docs/convergence.md.

With momentum SGD at a high learning rate, error feedback (beta = 1) at 100x
can collapse while dense training converges: a few large gradients enter the
memory, come back late and amplified by momentum. Clipping each worker's
gradient of each parameter *before* it reaches the compressor bounds what
enters the memory. Clipping after the exchange (the usual
``clip_grad_norm_`` before ``optimizer.step()``) acts on the averaged
gradient, after each worker's memory has already absorbed the spike.

    from horovod_scalecom.torch import ScaleCom, clip_before_exchange
    clip_before_exchange(model, max_norm=0.5)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=...,
                                         compression=ScaleCom(model, ratio=0.01))

Off unless called: the right ``max_norm`` depends on the model.
``ScaleCom(clip_norm=...)`` applies the same rule to the gradient each
exchange hands to ScaleCom, in every frontend (torch and TensorFlow); this
function clips each backward pass instead (``backward_passes_per_step > 1``).
"""

from __future__ import annotations

from typing import Iterable, Union

import torch
from torch.utils.hooks import RemovableHandle

from horovod_scalecom.config import CLIP_NORM_EPS, positive_number


def clip_before_exchange(parameters: Union[torch.nn.Module, Iterable[torch.Tensor]],
                         max_norm: float) -> list[RemovableHandle]:
    """Scale each parameter's incoming gradient so its L2 norm is at most ``max_norm``.

    Registers a tensor hook per parameter: it runs on this worker's gradient
    as backward produces it, before the gradient is accumulated into
    ``.grad`` and so before Horovod's hook hands it to ScaleCom and
    before the ring's ``step()``. With ``backward_passes_per_step > 1``
    each backward pass is clipped on its own. Returns the hook handles
    (``handle.remove()`` undoes it).
    """
    limit = positive_number(max_norm, "max_norm")
    params = parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters

    return [p.register_hook(lambda grad: grad * norm_scale(grad, limit))
            for p in params if p.requires_grad]


def norm_scale(grad: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """min(1, clip_norm / (||grad|| + eps)) as a 0-d tensor of grad's dtype
    (horovod_scalecom.config's rule for clip_norm)."""
    norm = torch.linalg.vector_norm(grad.detach().float())
    return torch.clamp(clip_norm / (norm + CLIP_NORM_EPS), max=1.0).to(grad.dtype)
