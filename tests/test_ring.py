"""The ScaleCom ring under real `mpirun -np N`: horovod_scalecom.torch.DistributedOptimizer and the
C++ ring engine against the NumPy ring simulator, bytes included."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from horovod_scalecom import bytes_model  # noqa: E402
from horovod_scalecom.config import ScaleComConfig, num_selected  # noqa: E402
from horovod_scalecom.reference import RingSimulator  # noqa: E402
from horovod_scalecom.reference.horovod_path import allreduce_mean  # noqa: E402

from mpi import run_bounded, run_mpi, requires  # noqa: E402

from workers.common import gradient  # noqa: E402

requires("horovod.torch")

SHAPES = {"a": (64, 48), "b": (37, 29), "bias": (64,), "c": (1000,)}


def rank_gradient(r, step, i, shape, dynamic=False):
    if dynamic and i == (r + step) % len(SHAPES):
        return np.zeros(shape, np.float32)      # this rank computed no gradient for it
    return gradient(0, r, step, i, shape)


def check(job, n, steps, cfg, shapes, dynamic=False, timed=True):
    """Every rank's outputs, bytes and memories against the reference; a key
    the worker did not write fails it. ``timed``: the worker reports the
    engine's selection time (the PyTorch worker does)."""
    sim = RingSimulator(n, cfg)
    results = [job.result(r) for r in range(n)]
    for step in range(steps):
        grads = {name: [rank_gradient(r, step, i, shape, dynamic) for r in range(n)]
                 for i, (name, shape) in enumerate(shapes.items())}
        ring = sim.step(grads)
        for name in shapes:
            outs = [res[f"out/{step}/{name}"].reshape(-1) for res in results]
            for r in range(1, n):
                np.testing.assert_array_equal(outs[r], outs[0], err_msg=f"{name} rank {r}")
            if ring[name] is None:          # dense: Horovod's allreduce, MPI's sum order
                expected = allreduce_mean([g.reshape(-1) for g in grads[name]])
                # n float32 roundings of terms up to the largest gradient entry
                scale = max(float(np.abs(g).max()) for g in grads[name])
                np.testing.assert_allclose(outs[0], expected, rtol=0, atol=2e-7 * n * scale)
            else:                           # the ring sums in the reference's order
                expected = ring[name].outputs[0]
                np.testing.assert_array_equal(outs[0].view(np.uint32), expected.view(np.uint32),
                                              err_msg=f"{name} at step {step}")
        for r, res in enumerate(results):
            assert int(res[f"bytes/{step}"]) == sim.last_bytes[r], f"bytes of rank {r}"
            if timed:       # the engine timed its selection + update
                compute = float(res[f"compress_s/{step}"])
                assert (compute > 0) == (sim.last_bytes[r] > 0), (step, compute)
    for r, res in enumerate(results):
        for name in shapes:
            if np.prod(shapes[name]) < cfg.min_numel:     # dense: no memory to hold
                assert not np.any(res.get(f"mem/{name}", 0)), f"memory of dense {name}"
                continue
            assert f"mem/{name}" in res, f"rank {r} reported no memory for {name}"
            np.testing.assert_array_equal(res[f"mem/{name}"].view(np.uint32),
                                          sim.memory[name][r].view(np.uint32),
                                          err_msg=f"memory of {name} on rank {r}")
    return results


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_ring_matches_reference_bitwise(n, tmp_path):
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(n, "torch_ring.py", tmp_path, "sequence", "--steps", "10",
                  timeout=300).check_ok()
    check(job, n, 10, cfg, SHAPES)
    # Every figure of docs/api.md's breakdown table, none hiding another.
    assert set(job.result(0)["breakdown_keys"].tolist()) == {
        "agree_s", "select_s", "mpi_reduce_scatter_s", "reduce_s", "mpi_allgather_s", "pack_s",
        "unpack_s", "update_s", "busy_s", "python_start_s", "start_s", "ring_wait_s",
        "copy_out_s", "dense_wait_s", "synchronize_s", "hidden_s"}


def test_ring_gradients_in_different_orders_and_sets_per_rank(tmp_path):
    """The ring exchanges at step(), in registration order: ranks whose backward
    passes produce gradients in different orders, or not at all, still agree."""
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(3, "torch_ring.py", tmp_path, "sequence", "--steps", "6", "--dynamic",
                  timeout=300).check_ok()
    check(job, 3, 6, cfg, SHAPES, dynamic=True)


@pytest.mark.parametrize("groups,exchanges", [("cap", 3), ("num", 2), ("list", 2)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_ring_groups_start_from_backward_and_change_no_bit(groups, exchanges, dynamic, tmp_path):
    """Gradients in several groups, each started by backward's hooks as soon as
    it is complete (in different orders per rank with --dynamic, some only at
    synchronize()): every rank still matches the reference bit for bit."""
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(3, "torch_ring.py", tmp_path, "sequence", "--steps", "4", "--groups", groups,
                  *(["--dynamic"] if dynamic else []), timeout=300).check_ok()
    results = check(job, 3, 4, cfg, SHAPES, dynamic=dynamic)
    # Groups holding only the dense bias go through Horovod, not the ring.
    assert {int(res[f"groups/{s}"]) for res in results for s in range(4)} == {exchanges}


def test_ring_accumulates_backward_passes_before_a_group_starts(tmp_path):
    # backward_passes_per_step=2: each group starts on the second pass only,
    # with the sum of both (two exact halves: the reference's gradient).
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_ring.py", tmp_path, "sequence", "--steps", "3", "--bpps", "2",
                  "--groups", "cap", timeout=300).check_ok()
    check(job, 2, 3, cfg, SHAPES)


def test_ring_horovod_optimizer_patterns(tmp_path):
    job = run_mpi(2, "torch_ring.py", tmp_path, "patterns", timeout=300).check_ok()
    for r in range(2):
        res = job.result(r)
        assert "before optimizer.step() or optimizer.synchronize()" in str(res["zero_grad_error"])
        assert "more than backward_passes_per_step" in str(res["second_backward_error"])
    np.testing.assert_array_equal(job.result(0)["averaged/0"], job.result(1)["averaged/0"])


def test_ring_tiny_tensors_and_warmup(tmp_path):
    shapes = dict(SHAPES, tiny=(3,))
    cfg = ScaleComConfig(ratio=0.05, beta=0.3, warmup_steps=2, min_numel=0)
    job = run_mpi(4, "torch_ring.py", tmp_path, "sequence", "--steps", "6", "--tiny",
                  "--min-numel", "0", "--warmup", "2", "--beta", "0.3", timeout=300).check_ok()
    check(job, 4, 6, cfg, shapes)


def mpi_built_with_cuda() -> bool | None:
    """What Open MPI's ompi_info says of its CUDA support; None: no ompi_info."""
    if shutil.which("ompi_info") is None:
        return None
    info = subprocess.run(["ompi_info", "--parsable", "--all"], capture_output=True, text=True,
                          timeout=60).stdout
    return "opal_built_with_cuda_support:value:true" in info


def test_device_transport_from_the_environment(monkeypatch):
    from horovod_scalecom.ring import TRANSPORT_ENV, device_transport
    for value, want in [("", "auto"), ("auto", "auto"), ("0", "staged"), ("1", "cuda-aware")]:
        monkeypatch.setenv(TRANSPORT_ENV, value)
        assert device_transport() == want
    monkeypatch.delenv(TRANSPORT_ENV)
    assert device_transport() == "auto"
    monkeypatch.setenv(TRANSPORT_ENV, "yes")
    with pytest.raises(ValueError, match="HOROVOD_SCALECOM_CUDA_AWARE_MPI='yes'"):
        device_transport()


def test_index_share_choice_from_the_environment(monkeypatch):
    # In this process MPI is not initialized: "auto" falls back to Horovod's
    # broadcast (None), "mpi" refuses to, a typo is named.
    from horovod_scalecom.ring import INDEX_SHARE_ENV, open_index_share
    for value in ("", "auto", "horovod"):
        monkeypatch.setenv(INDEX_SHARE_ENV, value or "auto")
        assert open_index_share(10) is None
    monkeypatch.setenv(INDEX_SHARE_ENV, "mpi")
    with pytest.raises(RuntimeError, match="not initialized with MPI_THREAD_MULTIPLE"):
        open_index_share(10)
    monkeypatch.setenv(INDEX_SHARE_ENV, "gloo")
    with pytest.raises(ValueError, match="HOROVOD_SCALECOM_INDEX_SHARE='gloo'"):
        open_index_share(10)


@pytest.mark.parametrize("cuda_aware", ["0", "1", "auto"])
def test_ring_device_side_through_the_c_abi(cuda_aware, tmp_path):
    # The engine's device side (messages in "device" memory, in-place hops,
    # the mean and the union update by kernels, the message staged through
    # "pinned" memory or handed to MPI as a CUDA-aware MPI would take it) with
    # every kernel call going through the C ABI's host double: bitwise the
    # reference, bytes and memory included, with an empty chunk (tiny) and
    # warm-up steps.
    from abi_double import build_for_workers
    lib = build_for_workers()
    shapes = dict(SHAPES, tiny=(3,))
    cfg = ScaleComConfig(ratio=0.05, beta=0.3, warmup_steps=2, min_numel=0)
    job = run_mpi(4, "torch_ring.py", tmp_path / "job", "sequence", "--steps", "6", "--tiny",
                  "--min-numel", "0", "--warmup", "2", "--beta", "0.3", "--kernels-lib",
                  str(lib), env={"HOROVOD_SCALECOM_CUDA_AWARE_MPI": cuda_aware},
                  timeout=300).check_ok()
    check(job, 4, 6, cfg, shapes)
    transports = {str(job.result(r)["transport/5"]) for r in range(4)}
    if cuda_aware == "auto":
        # Asked of the MPI library: a build without CUDA support never says yes.
        assert transports in ({"pinned host staging"}, {"cuda-aware MPI"})
        if mpi_built_with_cuda() is False:
            assert transports == {"pinned host staging"}
    else:
        assert transports == {{"0": "pinned host staging", "1": "cuda-aware MPI"}[cuda_aware]}


def test_ring_takes_the_kernel_table_by_name():
    # The engine looks each CUDA function up by its name in the table the
    # loaded library hands over (csrc/ring/buffers.h's one list): a missing
    # entry is named, not a crash at the first GPU step. The host double
    # is not needed: the check comes before any call.
    script = ("from mpi4py import MPI\n"
              "from horovod_scalecom.ring import load_ring\n"
              "engine = load_ring().Engine()\n"
              "try:\n"
              "    engine.use_device_kernels({'ring_select': 1}, 'auto')\n"
              "except ValueError as exc:\n"
              "    print('refused:', exc)\n"
              "engine.close(10)\n")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    code, output, killed = run_bounded([sys.executable, "-c", script], env, 120)
    assert not killed and code == 0, output
    assert "refused: ring allreduce: the CUDA kernel table has no 'select_workspace_bytes'" \
        in output


def test_ring_device_side_refuses_indices_outside_their_chunk(tmp_path):
    # Rank 1's chunk selection (the double, on demand) sends an index past its
    # chunk: rank 2 finds it at its next wait for the device and fails with the
    # host path's message, before anything reaches its memory; the job ends.
    from abi_double import build_for_workers
    lib = build_for_workers()
    start = time.monotonic()
    job = run_mpi(3, "torch_ring.py", tmp_path / "job", "sequence", "--steps", "2",
                  "--kernels-lib", str(lib), "--timeout", "20",
                  env={"SCALECOM_DOUBLE_BAD_INDEX_RANK": "1"}, timeout=120)
    assert job.returncode != 0
    assert "received an index outside its chunk" in (job.error(2) or ""), job.output
    assert time.monotonic() - start < 90


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_ring_on_cuda_gradients(tmp_path):
    # Two ranks on the first GPU: the real kernels, memory on the device.
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_ring.py", tmp_path, "sequence", "--steps", "6", "--device", "cuda",
                  timeout=300).check_ok()
    check(job, 2, 6, cfg, SHAPES)


def test_ring_bytes_bounded_in_n(tmp_path):
    """Per-rank bytes follow 12 k (n - 1) / n: bounded by 12 k for any n, where
    top-k allgather's 8 k (n - 1) grows linearly."""
    per_rank = {}
    for n in (2, 4, 8):
        job = run_mpi(n, "torch_ring.py", tmp_path / str(n), "sequence", "--steps", "2",
                      "--min-numel", "1000", timeout=400).check_ok()
        per_rank[n] = [int(job.result(r)["bytes/1"]) for r in range(n)]
    k_total = {n: sum(num_selected(len(c), 0.05)
                      for shape in ((64, 48), (37, 29), (1000,))
                      for c in np.array_split(np.arange(int(np.prod(shape))), n))
               for n in (2, 4, 8)}
    for n, sent in per_rank.items():
        assert max(sent) <= 12 * k_total[n]
        assert abs(np.mean(sent) - bytes_model.ring(k_total[n], n)) <= 12 * n
    grow = np.mean(per_rank[8]) / np.mean(per_rank[2])
    assert grow < 1.9, f"bytes per rank grew {grow:.2f}x from n=2 to n=8"
    assert bytes_model.topk_allgather(k_total[8], 8) / bytes_model.topk_allgather(
        k_total[2], 2) > 6


def test_rank_failing_mid_step_ends_every_rank(tmp_path):
    start = time.monotonic()
    job = run_mpi(3, "torch_ring.py", tmp_path, "sequence", "--steps", "6", "--fail-at", "3",
                  "--timeout", "20", timeout=120)
    assert job.returncode != 0
    assert "injected failure on rank 1" in (job.error(1) or "")
    assert time.monotonic() - start < 90


# --- the TensorFlow frontends of the ring (their own mpirun jobs) ---------------------

@pytest.mark.parametrize("n,extra", [(2, ()), (3, ("--function",))])
def test_tf_tape_ring_matches_reference_bitwise(n, extra, tmp_path):
    requires("horovod.tensorflow")
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(n, "tf_compressor.py", tmp_path, "ring_sequence", "--steps", "8", *extra,
                  timeout=300).check_ok()
    check(job, n, 8, cfg, SHAPES, timed=False)


def test_tf_ring_tiny_tensors_and_warmup(tmp_path):
    requires("horovod.tensorflow")
    shapes = dict(SHAPES, tiny=(3,))
    cfg = ScaleComConfig(ratio=0.05, beta=0.3, warmup_steps=2, min_numel=0)
    job = run_mpi(4, "tf_compressor.py", tmp_path, "ring_sequence", "--steps", "5", "--tiny",
                  "--min-numel", "0", "--warmup", "2", "--beta", "0.3", "--function",
                  timeout=300).check_ok()
    check(job, 4, 5, cfg, shapes, timed=False)


def test_keras_fit_with_ring_optimizer(tmp_path):
    requires("horovod.tensorflow")
    job = run_mpi(2, "tf_compressor.py", tmp_path, "ring_keras", "--steps", "10",
                  timeout=300).check_ok()
    job.assert_ranks_equal("w")
    assert int(job.result(0)["ring_bytes"]) > 0


def test_ring_under_gloo_is_refused_when_built(tmp_path):
    # The ring is an MPI communicator; Gloo (and so Elastic) has none. The
    # message names the Compressor path, which runs there.
    job = run_mpi(2, "torch_ring.py", tmp_path, "sequence", "--steps", "2", timeout=240,
                  gloo=True)
    job.assert_error_on_every_rank("Use hvd.DistributedOptimizer(..., compression=ScaleCom(...)) "
                                   "there")
