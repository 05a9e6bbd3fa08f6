"""torch.compile with ScaleCom's DDP hook, 2 ranks under torchrun (gloo, CPU):
what the hook hands back from compiled gradients is the NumPy reference's
mean of them, bit for bit, and the compiled runs update the model as the eager
one does (tests/workers/ddp_compile.py).

With dynamo's default DDP support (``optimize_ddp="ddp_optimizer"``) the
compiled backward still runs through DDP's C++ reducer, which calls the hook
per bucket as in eager mode. aot_eager runs torch's eager kernels: the same
bits as eager. Inductor generates its own kernels, which round some
gradients differently in the last bits (a fused bias sum, say); from then on
the runs differ by that rounding, not by ScaleCom."""

import numpy as np
import pytest

from compressor_check import assert_exchange
from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import HorovodPathSimulator
from mpi import WORKERS, requires
from torchrun import run_torchrun

requires("torch")

STEPS, RATIO = 4, 0.05
MODES = ("eager", "aot_eager", "inductor", "inner")
NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    job = run_torchrun(WORKERS / "ddp_compile.py", out, str(out), *MODES, timeout=240).check_ok()
    return [job.result(r) for r in range(2)]


@pytest.mark.parametrize("mode", MODES)
def test_hook_gives_the_reference_mean_of_each_runs_gradients(results, mode):
    sim = HorovodPathSimulator(2, ScaleComConfig(ratio=RATIO))
    for step in range(STEPS):
        for name in NAMES:
            grads = [r[f"{mode}/in/{step}/{name}"] for r in results]
            ref = sim.step(name, grads).outputs[0]
            for rank, r in enumerate(results):
                assert_exchange(r[f"{mode}/out/{step}/{name}"], ref, True,
                                f"{mode}: {name} at step {step} on rank {rank}")
    if mode != "eager":
        assert int(results[0][f"{mode}/graphs"]) >= 1, "dynamo compiled no graph"
    # The state's names are the eager model's, so checkpoints move between them.
    assert sorted(results[0][f"{mode}/names"]) == sorted(NAMES)


@pytest.mark.parametrize("mode", ["aot_eager", "inner"])
def test_compiled_with_eager_kernels_updates_bit_for_bit(results, mode):
    for r in results:
        for name in NAMES:
            np.testing.assert_array_equal(r[f"{mode}/param/{name}"].view(np.uint32),
                                          r[f"eager/param/{name}"].view(np.uint32),
                                          err_msg=f"{mode}: {name}")


def test_inductor_updates_as_eager_to_rounding(results):
    # The bits differ (generated kernels), and only by rounding.
    assert any((results[0][f"inductor/param/{n}"] != results[0][f"eager/param/{n}"]).any()
               for n in NAMES), "inductor's run has eager's bits: did inductor run?"
    for r in results:
        for name in NAMES:
            np.testing.assert_allclose(r[f"inductor/param/{name}"], r[f"eager/param/{name}"],
                                       rtol=1e-5, atol=1e-6, err_msg=f"inductor: {name}")
