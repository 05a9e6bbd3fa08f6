"""The names of the benchmarks' methods, and the older names they replace.

ScaleCom's two exchanges are the methods ``"scalecom"`` (ScaleCom through
Horovod's allreduce: ``hvd.DistributedOptimizer(opt, compression=ScaleCom(...))``)
and ``"scalecom ring"`` (the ScaleCom ring, this package's
``DistributedOptimizer``). Until 2026-12-03 the code called them ``"path A"``
and ``"path B"``; commands and saved JSON (docs/data)
that use those are read under the new names, so the published figures can
be re-plotted without re-running them.
"""

from __future__ import annotations

import argparse
from typing import Sequence

SCALECOM = "scalecom"
RING = "scalecom ring"

# Older name (any case) -> name.
ALIASES = {"path a": SCALECOM, "path b": RING}


def method_name(name: str) -> str:
    """``name``, or the name an older one stands for ("path A" -> "scalecom")."""
    return ALIASES.get(name.strip().lower(), name)


def add_methods_option(parser: argparse.ArgumentParser, methods: Sequence[str]) -> None:
    """``--methods``: some of ``methods`` (default: all), older names accepted."""
    parser.add_argument("--methods", nargs="+", type=method_name, choices=methods,
                        default=list(methods),
                        help="the methods to run (files saved before 2026-12-03 "
                             "name them differently; those names are accepted too)")


def renamed_row(row: dict) -> dict:
    """A saved row of figures with its method under the current name."""
    return {**row, "method": method_name(row["method"])}
