"""Loads the C++ core's torch operators (torch.ops.scalecom.*).

There is no Python fallback: without the compiled extension this import fails
and says how to build it.
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

__all__ = ["ops"]
