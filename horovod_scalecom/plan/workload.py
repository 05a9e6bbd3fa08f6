"""The gradient shapes a plan is made for: a named model or the user's own.

Named models are the shape lists in ``shapes`` (ResNet-50, BERT-base, a
1B-parameter decoder-only transformer, a small transformer-like list; the
exchange benchmark times the same lists). A user's own model comes from a
file: a JSON list of tensor sizes or shapes (``[1024, [512, 512], ...]``), or
a saved torch state_dict / checkpoint (``.pt``/``.pth``/``.bin``), whose
floating-point tensors are the parameters.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

from horovod_scalecom.plan.shapes import (Shape, bert_base, resnet50, transformer_1b,
                                          transformer_small)

MODELS = {"resnet50": resnet50, "bert-base": bert_base, "transformer-1b": transformer_1b,
          "transformer-small": transformer_small}


def _shape(item, where: str) -> Shape:
    if isinstance(item, bool):
        raise ValueError(f"--shapes {where}: {item!r} is not a tensor size or shape")
    if isinstance(item, int):
        item = [item]
    if not isinstance(item, list) or not item or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in item):
        raise ValueError(f"--shapes {where}: {item!r} is not a positive size or a list of "
                         "positive dimensions")
    return tuple(item)


def load_shapes(path: str) -> list[Shape]:
    """Parameter shapes from ``path``: a JSON list of sizes/shapes, or a
    torch-saved state_dict (or a checkpoint holding one under "state_dict"
    or "model"). ValueError naming --shapes when the file is missing or holds
    no usable shapes."""
    if not os.path.isfile(path):
        raise ValueError(f"--shapes: no such file {path!r}")
    if path.endswith(".json"):
        with open(path) as f:
            try:
                items = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--shapes {path}: not valid JSON ({exc})") from None
        if not isinstance(items, list) or not items:
            raise ValueError(f"--shapes {path}: expected a non-empty JSON list of tensor sizes "
                             "or shapes")
        return [_shape(item, f"{path}[{i}]") for i, item in enumerate(items)]
    import torch  # only for a saved state_dict
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--shapes {path}: neither a JSON list nor a saved state_dict")
    shapes = [tuple(t.shape) or (1,) for t in state.values()
              if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not shapes:
        raise ValueError(f"--shapes {path}: the state_dict holds no floating-point tensors")
    return shapes


def numels(shapes: Sequence[Shape]) -> list[int]:
    return [math.prod(s) for s in shapes]


def model_shapes(name: str) -> list[Shape]:
    """The shapes of a named model; ValueError naming --model if unknown."""
    if name not in MODELS:
        raise ValueError(f"--model: unknown model {name!r}; known: {', '.join(sorted(MODELS))} "
                         "(or give --shapes FILE)")
    return MODELS[name]()
