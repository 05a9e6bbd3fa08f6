"""The self-check: ``python -m horovod_scalecom.check``.

Run it before filing a bug, and after installing on a new machine. It says
what was built and loads (frontends, ops, the ring, the CUDA kernels), which
MPI and Horovod it found and how Horovod was built, then runs a short 2-rank
exchange of each kind the installation offers and compares every averaged
gradient with the NumPy reference (``horovod_scalecom.reference``). Each
failure is one line that says what to do. The exit status is 0 when nothing
failed.

* :mod:`.probe`: what is installed and loads (each framework probed in a
  process of its own: horovod.torch and horovod.tensorflow never share one);
* :mod:`.exchange`: the 2-rank worker of each kind;
* :mod:`.expected`: the reference's result for the worker's gradients, and
  the comparison;
* :mod:`.launch`: starting the 2-rank jobs, bounded in time;
* :mod:`.report`: the lines printed and the exit status.
"""
