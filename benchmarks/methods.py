"""The names of the benchmarks' methods for ScaleCom's two exchanges.

``"scalecom"`` is ScaleCom through Horovod's allreduce
(``hvd.DistributedOptimizer(opt, compression=ScaleCom(...))``) and
``"scalecom ring"`` the ScaleCom ring (this package's ``DistributedOptimizer``).
"""

from __future__ import annotations

import argparse
from typing import Sequence

SCALECOM = "scalecom"
RING = "scalecom ring"


def add_methods_option(parser: argparse.ArgumentParser, methods: Sequence[str]) -> None:
    """``--methods``: some of ``methods`` (default: all)."""
    parser.add_argument("--methods", nargs="+", choices=methods, default=list(methods),
                        help="the methods to run")
