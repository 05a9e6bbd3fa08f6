"""Loads the C++ core's TensorFlow custom ops (CPU).

There is no Python fallback: without the compiled library this import fails
and says how to build it.
"""

import importlib.machinery
from pathlib import Path

import tensorflow as tf

_PACKAGE = Path(__file__).resolve().parent.parent


def _library_path() -> Path:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _PACKAGE / f"_tf_ops{suffix}"
        if path.exists():
            return path
    raise ImportError(
        f"horovod_scalecom's TensorFlow ops (_tf_ops) are not built in {_PACKAGE}. Build them "
        f"against the installed TensorFlow {tf.__version__} with `bash scripts/setup.sh` or "
        "`pip install --no-build-isolation -e .` in the source tree.")


try:
    ops = tf.load_op_library(str(_library_path()))
except tf.errors.NotFoundError as exc:
    raise ImportError(
        f"horovod_scalecom's TensorFlow ops could not be loaded: {exc}. Rebuild them against "
        f"TensorFlow {tf.__version__} with `bash scripts/setup.sh`.") from exc

__all__ = ["ops"]
