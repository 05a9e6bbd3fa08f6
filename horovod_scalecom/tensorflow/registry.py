"""Which gradient is which, for the TensorFlow ScaleCom: each compressed
gradient's key (its position in the variable list and its shape), leader
offset, size and k, and what an Elastic restore or reset needs of them.

Plain Python, apart from the ScaleCom (a tf.Module) that holds it, so that
tf.Module does not try to track Python values. ScaleCom's variables (memory,
step counters) stay in the ScaleCom, which checkpoints them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import tensorflow as tf


@dataclass
class TensorEntry:
    """Python-side facts of one gradient (its variables live in ScaleCom's dicts)."""

    key: str
    op_name: str        # names the tensor's Horovod ops, the same on every rank
    offset: int
    numel: int
    k: int


class Registry:
    """The gradients one ScaleCom has seen, keyed as ``record`` says."""

    def __init__(self) -> None:
        self.entries: dict[str, TensorEntry] = {}
        self.offsets: dict[str, int] = {}
        # Rank 0's step counters after an Elastic reset, for gradients not traced yet.
        self.initial_steps: dict[str, int] = {}
        # Each gradient's variables as they were made (restore() of a later snapshot).
        self.initial: dict[Any, tf.Tensor] = {}
        self._seen = weakref.WeakKeyDictionary()

    def record(self, offset: int, shape: tf.TensorShape) -> str:
        """The key of the gradient at `offset` of this shape, remembered. Another
        shape at a position seen before means another variable list: its
        gradient would inherit a memory (and leader) that is not its own."""
        key = f"{offset}|{shape.as_list()}"
        for other, seen in self.offsets.items():
            if seen == offset and other != key:
                raise ValueError(
                    f"ScaleCom: gradient {offset} of this step has shape "
                    f"{key.split('|', 1)[1]}, earlier steps had {other.split('|', 1)[1]} there; "
                    "a ScaleCom serves one tape or optimizer with one list of variables "
                    "(use one ScaleCom per tape, e.g. for a GAN's two models)")
        self.offsets[key] = offset
        return key

    def next_index(self, graph) -> int:
        """Position of this gradient among those compressed in the same graph:
        the position in the tape's or optimizer's variable list, dense ones
        included, as the torch frontend's named_parameters index. A retrace
        starts a new graph and so finds the same positions again."""
        index = self._seen.get(graph, 0)
        self._seen[graph] = index + 1
        return index
