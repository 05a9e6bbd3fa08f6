"""Benchmarks and studies: scripts that print figures (never timed unit tests).

Beside the package, not installed with it: run them from a checkout's root,
``python -m benchmarks.network ...``. The library never imports them.
"""
