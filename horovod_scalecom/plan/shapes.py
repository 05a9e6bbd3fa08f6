"""Gradient shapes of real models, as lists (no downloads, no model code).

Each function returns the parameter shapes in registration order, which is
all the planner and an exchange benchmark need: the tensors' sizes decide
what the compressors select and what the network carries.
"""

from __future__ import annotations

Shape = tuple[int, ...]


def resnet50(classes: int = 1000) -> list[Shape]:
    """torchvision's resnet50: 161 tensors, 25,557,032 parameters."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if block == 0:          # the downsample projection
                shapes += [(4 * width, inplanes, 1, 1), (4 * width,), (4 * width,)]
            inplanes = 4 * width
    return shapes + [(classes, 2048), (classes,)]


def bert_base(vocab: int = 30522, hidden: int = 768, layers: int = 12) -> list[Shape]:
    """BERT-base (uncased) with its pooler: 199 tensors, 109,482,240 parameters."""
    ffn = 4 * hidden
    shapes: list[Shape] = [(vocab, hidden), (512, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        for _ in range(4):          # query, key, value, attention output
            shapes += [(hidden, hidden), (hidden,)]
        shapes += [(hidden,), (hidden,), (ffn, hidden), (ffn,), (hidden, ffn), (hidden,),
                   (hidden,), (hidden,)]
    return shapes + [(hidden, hidden), (hidden,)]


def transformer_small() -> list[Shape]:
    """A transformer-like list: 37 tensors, 14,592,000 parameters."""
    return ([(512, 512)] * 8 + [(2048, 512)] * 4 + [(512, 2048)] * 4 + [(512,)] * 20
            + [(8000, 512)])


def transformer_1b(vocab: int = 50304, hidden: int = 2048, layers: int = 20,
                   context: int = 2048) -> list[Shape]:
    """A GPT-style decoder (pre-norm, 4x MLP, learned positions, tied output
    embedding): 20 layers of width 2048, 1,114,386,432 parameters."""
    shapes: list[Shape] = [(vocab, hidden), (context, hidden)]
    for _ in range(layers):
        shapes += [(hidden,), (hidden,), (3 * hidden, hidden), (3 * hidden,),
                   (hidden, hidden), (hidden,), (hidden,), (hidden,),
                   (4 * hidden, hidden), (4 * hidden,), (hidden, 4 * hidden), (hidden,)]
    return shapes + [(hidden,), (hidden,)]
