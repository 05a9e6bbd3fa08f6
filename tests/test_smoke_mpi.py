"""The real stack: mpirun -np 2 with Horovod's torch and TensorFlow cores, one job each."""

import numpy as np
import pytest

from mpi import run_mpi


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_horovod_allreduce_two_ranks(framework, tmp_path):
    job = run_mpi(2, "smoke.py", tmp_path, framework, timeout=240).check_ok()
    expected = np.arange(5, dtype=np.float32) * 2 + 10
    for rank in range(2):
        res = job.result(rank)
        assert int(res["size"]) == 2
        np.testing.assert_array_equal(res["summed"], expected)
