"""horovod_scalecom.torch.ScaleCom under real `mpirun -np N` against the NumPy reference."""

import json

import numpy as np
import pytest

from horovod_scalecom.config import ScaleComConfig  # noqa: E402
from horovod_scalecom.stats import last_step, new_record  # noqa: E402

from compressor_check import NAMES, check, reference  # noqa: E402
from mpi import run_mpi, requires  # noqa: E402

requires("horovod.torch")


@pytest.mark.parametrize("n", [2, 3, 4])
def test_outputs_and_memory_match_reference(n, tmp_path):
    steps = 20
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(n, "torch_compressor.py", tmp_path, "sequence", "--steps", str(steps),
                  timeout=300).check_ok()
    # n = 2: a sum of two is exact whatever the order, so bit for bit. Larger n:
    # MPI may add in another order than the reference, so equal up to rounding.
    results = check(job, n, steps, cfg, exact=(n == 2))
    sent = float(results[0]["stats/bytes_sent"])
    dense = float(results[0]["stats/dense_bytes"])
    assert dense / sent > 5
    # stats() has the keys every frontend shares (horovod_scalecom.stats).
    expected = last_step({"t": new_record(10, 1, 0, 0, n)}, {}, "mpi")
    assert json.loads(str(results[0]["stats_keys"])) == [sorted(expected),
                                                         sorted(expected["tensors"]["t"])]


@pytest.mark.parametrize("share", ["mpi", "horovod"])
def test_index_share_over_mpi_or_horovod_matches_reference(share, tmp_path):
    # The leader's indices as ScaleCom's own MPI messages (the default under
    # mpirun) or as Horovod's broadcast: the reference's numbers either way (the memory
    # bit for bit; outputs to rounding, as MPI may sum 3 ranks in another order).
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(3, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  env={"HOROVOD_SCALECOM_INDEX_SHARE": share}, timeout=240).check_ok()
    results = check(job, 3, 6, cfg, exact=False)
    assert {str(r["stats/index_share"]) for r in results} == {share}


def test_horovod_path_under_horovodrun_gloo(tmp_path):
    # The Horovod path uses Horovod's own collectives only, so it runs under the Gloo
    # controller too (no MPI): bitwise the reference on 2 ranks.
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  timeout=240, gloo=True).check_ok()
    results = check(job, 2, 6, cfg, exact=True)
    assert {str(r["stats/index_share"]) for r in results} == {"horovod"}


def test_warmup_groups_set_to_none_accumulation(tmp_path):
    cfg = ScaleComConfig(ratio=0.02, beta=0.3, warmup_steps=3, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "8", "--ratio",
                  "0.02", "--beta", "0.3", "--warmup", "3", "--bpps", "2", "--groups", "2",
                  "--set-to-none", timeout=240).check_ok()
    check(job, 2, 8, cfg, exact=True, bpps=2)


def test_parameter_without_gradient(tmp_path):
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  "--skip-param", "2", timeout=240).check_ok()
    check(job, 2, 6, cfg, exact=True, skip_param=2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_gradients(dtype, tmp_path):
    import torch
    tdtype = getattr(torch, dtype)
    cast = lambda g: torch.from_numpy(g).to(tdtype).float().numpy()  # noqa: E731
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  "--dtype", dtype, timeout=240).check_ok()
    expected, sim = reference(2, 6, cfg, cast=cast)
    res = job.result(0)
    for step in range(6):
        for name in NAMES:
            ref = torch.from_numpy(expected[step][name]).to(tdtype).float().numpy()
            np.testing.assert_array_equal(res[f"out/{step}/{name}"].reshape(-1), ref)
    for name in NAMES:
        if sim.tensors[name].numel >= cfg.min_numel:
            assert f"mem/{name}" in res, f"no memory reported for {name}"
            np.testing.assert_array_equal(res[f"mem/{name}"], sim.memory(name, 0))


def test_small_model_stays_identical_on_all_ranks(tmp_path):
    job = run_mpi(3, "torch_compressor.py", tmp_path, "train", "--steps", "50",
                  "--ratio", "0.02", timeout=300).check_ok()
    job.assert_ranks_equal()
    assert any(np.abs(v).sum() > 0 for v in job.result(0).values())


@pytest.mark.parametrize("case,args,message", [
    ("ratio", ["--ratio", "0"], "ratio must lie in"),
    ("ratio", ["--ratio", "1.5"], "ratio must lie in"),
    ("beta", ["--beta", "0"], "beta must lie in"),
    ("beta", ["--beta", "2"], "beta must lie in"),
    ("unknown", [], "not the .grad of any parameter"),
    ("generator", [], "one-shot iterator"),
])
def test_bad_input_fails_clearly_on_every_rank(case, args, message, tmp_path):
    job = run_mpi(2, "torch_compressor.py", tmp_path, "bad", "--case", case, *args, timeout=120)
    job.assert_error_on_every_rank(message)


DISAGREE = [
    ("numel", "ranks disagree on parameter names/sizes checksum"),
    ("extra_param", "ranks disagree on number of parameters"),
    ("ratio_differs", "ranks disagree on ratio (rank 0: ratio 0.01; rank 1: ratio 0.02)"),
    ("shape_change", "shapes must not change"),
]


# A sparse gradient is refused by the ring only: the Horovod path hands it to
# Horovod's own sparse allreduce (test_documented_edge_inputs).
@pytest.mark.parametrize("path,case,message",
                         [(path, *c) for path in ("horovod", "ring") for c in DISAGREE]
                         + [("ring", "sparse", "is sparse")])
def test_ranks_or_steps_that_disagree_fail_clearly(path, case, message, tmp_path):
    job = run_mpi(2, "torch_compressor.py", tmp_path, "bad", "--case", case, "--path", path,
                  timeout=120)
    job.assert_error_on_every_rank(message)


def test_noncontiguous_gradients(tmp_path):
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  "--noncontig", timeout=240).check_ok()
    check(job, 2, 6, cfg, exact=True)


@pytest.mark.parametrize("path", ["horovod", "ring"])
def test_documented_edge_inputs(path, tmp_path):
    from workers.common import gradient
    job = run_mpi(2, "torch_compressor.py", tmp_path, "edge", "--path", path,
                  timeout=180).check_ok()
    job.assert_ranks_equal()
    res = job.result(0)
    for step in range(3):
        assert res[f"out/{step}/empty"].shape == (0,)
        # float64 goes dense: the exact mean (a sum of two is exact).
        expected = (gradient(0, 0, step, 9, (3000,)).astype(np.float64)
                    + gradient(0, 1, step, 9, (3000,)).astype(np.float64)) / 2
        np.testing.assert_array_equal(res[f"out/{step}/wide"], expected)
        if path == "horovod":         # rows step, 7 and 8 were looked up (by one rank each for 7, 8)
            emb = res[f"out/{step}/emb.weight"]
            assert set(np.flatnonzero(np.abs(emb).sum(1))) == {step, 7, 8}


@pytest.mark.parametrize("how", ["--clip", "--clip-norm"])
def test_clip_to_norm_acts_before_the_compressor(tmp_path, how):
    # Gradients of norm ~50 clipped to 5 on every rank, by clip_before_exchange
    # before Horovod's hook or by ScaleCom(clip_norm=5) as it takes them:
    # outputs and memories follow the reference fed with clipped gradients
    # (up to the rounding of the norm), and differ from the unclipped run.
    cfg = ScaleComConfig(ratio=0.05, beta=0.1, min_numel=100)
    job = run_mpi(2, "torch_compressor.py", tmp_path, "sequence", "--steps", "6",
                  how, "5", timeout=240).check_ok()
    check(job, 2, 6, cfg, exact=False, memory_exact=False, clip=5.0)
    unclipped, _ = reference(2, 6, cfg)
    out = job.result(0)[f"out/5/{NAMES[0]}"].reshape(-1)
    assert np.abs(out).max() < 0.2 * np.abs(unclipped[5][NAMES[0]]).max()
