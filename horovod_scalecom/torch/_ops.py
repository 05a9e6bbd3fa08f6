"""Loads the C++ core's torch operators (torch.ops.scalecom.*).

The same ops serve CPU and CUDA tensors through torch's dispatch: the CPU
core (csrc/torch/ops.cc), and the CUDA kernels (csrc/torch/cuda_ops.cc) in a
build that has them, which ``CUDA_KERNELS`` says. There is no Python
fallback: without the compiled extension this import fails and says how to
build it.
"""

import torch

try:
    from horovod_scalecom import _torch_ops  # noqa: F401  (registers torch.ops.scalecom)
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "horovod_scalecom's C++ extension for torch (horovod_scalecom._torch_ops) could not "
        f"be loaded: {exc}. Build it against the installed torch {torch.__version__} with "
        "`bash scripts/setup.sh` or `pip install --no-build-isolation -e .` in the source tree."
    ) from exc

ops = torch.ops.scalecom
CUDA_KERNELS: bool = bool(_torch_ops.cuda_kernels)

__all__ = ["ops", "CUDA_KERNELS"]
