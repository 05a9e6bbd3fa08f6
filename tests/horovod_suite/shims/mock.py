"""Stand-in for the ``mock`` package, which Horovod's test/utils/common.py
imports: the standard library's unittest.mock (tests/horovod_suite/run.py)."""

from unittest.mock import *  # noqa: F401,F403
