"""Predict a training step before running it: a calibrated performance model.

    python -m horovod_scalecom.plan --model resnet50 --workers 64 --gbit 25 --backward-ms 30
    python -m horovod_scalecom.plan.calibrate --out my_host.json   # < 1 minute

``model`` holds the per-method step model (dense, fp16, PowerSGD, ScaleCom
through Horovod's allreduce, the ScaleCom ring, ScaleCom's DDP hook),
``constants`` the per-element and per-byte costs it needs, ``calibrate``
measures them on this host with the package's own C++ kernels, ``workload``
the gradient shapes (``shapes``: the named models'). Nothing here imports
Horovod: the planner runs on a laptop before any cluster exists.
docs/benchmarks.md ("Predicting a step on your cluster") compares the model
with every measured network cell (``python -m benchmarks.validate_plan``,
from a checkout).
"""
