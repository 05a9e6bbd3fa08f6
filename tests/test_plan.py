"""The step model and its command (horovod_scalecom.plan): bytes, limits, CLI, files.

Fast and without mpirun; nothing here asserts a timing. The constants are
either fixed figures (of this project's development machine's order) or the
committed calibration, docs/data/plan/calibration.json.
"""

from __future__ import annotations

import glob
import json
import math

import pytest

from horovod_scalecom import bytes_model
from horovod_scalecom.config import DEFAULTS, num_selected
from horovod_scalecom.plan import decide
from horovod_scalecom.plan.__main__ import main
from horovod_scalecom.plan.constants import Constants, gpu_projection, load, save
from horovod_scalecom.plan.model import (DENSE, FP16, HOOK, METHODS, POWERSGD, RING, SCALECOM,
                                         SCALECOM_METHODS, Cluster, Settings, predict)
from horovod_scalecom.plan.workload import MODELS, load_shapes, model_shapes, numels

from benchmarks.validate_plan import DATA, cells

from mpi import ROOT

CALIBRATION = ROOT / "docs/data/plan/calibration.json"
FIXED = Constants(select_s=1.0e-9, update_s=4e-10, scatter_s=1.5e-9, clip_s=3e-10, reduce_s=2e-10,
                  copy_s=1.5e-10, half_s=3e-10, half_reduce_s=1e-10, powersgd_s=4e-9,
                  pass_s=1.5e-10, call_s=2e-5, tcp_s_per_byte=3e-10, latency_s=1e-5, cores=2,
                  source="fixed figures for the tests")


def all_constants() -> list[Constants]:
    committed = load(str(CALIBRATION))
    return [FIXED, gpu_projection(FIXED, 2e12), committed, gpu_projection(committed, 3.35e12)]


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64])
@pytest.mark.parametrize("model", ["resnet50", "bert-base"])
def test_bytes_are_the_byte_model(model, n):
    shapes = model_shapes(model)
    sizes = numels(shapes)
    cluster = Cluster(workers=n, gbit=10, backward_s=0.05)
    settings = Settings(ratio=0.01, hook_ratio=0.007)
    small = sum(bytes_model.dense_ring_allreduce(x, n) for x in sizes if x < DEFAULTS.min_numel)
    big = [x for x in sizes if x >= DEFAULTS.min_numel]
    dense = sum(bytes_model.dense_ring_allreduce(x, n) for x in sizes)
    want = {
        DENSE: dense, FP16: dense / 2,
        SCALECOM: small + sum(bytes_model.horovod_path(num_selected(x, 0.01), n) for x in big),
        HOOK: small + sum(bytes_model.horovod_path(num_selected(x, 0.007), n) for x in big),
        RING: small + sum(bytes_model.ring(num_selected(x, 0.01), n) for x in big),
    }
    if n == 1:
        want = dict.fromkeys(want, 0.0)
    for method, expected in want.items():
        got = predict(method, shapes, cluster, FIXED, settings).bytes_per_rank
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-9), method


def test_bytes_match_every_measured_cell():
    """Dense, fp16, PowerSGD, the Horovod path and the hook: the benchmark's
    own counts exactly; the ring: the engine's count (its k per chunk rounds
    up) within 0.2%."""
    rows = cells([p for pattern in DATA for p in sorted(glob.glob(str(ROOT / pattern)))], FIXED)
    assert {r["method"] for r in rows} == set(METHODS)
    for r in rows:
        tolerance = 2e-3 if r["method"] == RING else 1e-12
        assert r["bytes_model"] == pytest.approx(r["bytes_run"], rel=tolerance), r


@pytest.mark.parametrize("c", all_constants(), ids=["fixed", "fixed-gpu", "calib", "calib-gpu"])
@pytest.mark.parametrize("n", [2, 8, 1024])
def test_more_bandwidth_is_never_slower(c, n):
    shapes = model_shapes("resnet50")
    for method in METHODS:
        steps = [predict(method, shapes, Cluster(workers=n, gbit=g, backward_s=0.03,
                                                 ranks_per_host=2), c).step_s
                 for g in (0.1, 1, 10, 25, 100, 400, 1e4)]
        assert all(a >= b for a, b in zip(steps, steps[1:])), (method, steps)


@pytest.mark.parametrize("c", all_constants(), ids=["fixed", "fixed-gpu", "calib", "calib-gpu"])
@pytest.mark.parametrize("model", ["resnet50", "bert-base"])
def test_no_speedup_at_infinite_bandwidth(c, model):
    """Without a host stack per byte (RDMA), fewer bytes buy nothing once
    the link is infinitely fast: compression only adds work. "Small": groups
    of different sizes overlap backward differently (a smaller last group
    ends sooner), worth well under 1% here. (Not fp16: its casts can cost
    less than the float32 reduction's memory traffic saves.)"""
    shapes = model_shapes(model)
    for n in (2, 8, 64):
        cluster = Cluster(workers=n, gbit=1e12, backward_s=0.03, tcp=False)
        for method in (POWERSGD, *SCALECOM_METHODS):
            assert decide.speedup(method, shapes, cluster, c, Settings()) <= 1.01, (n, method)


def test_one_worker_sends_nothing_and_waits_for_backward_only():
    for method in METHODS:
        p = predict(method, model_shapes("resnet50"), Cluster(workers=1, gbit=1, backward_s=0.04),
                    FIXED)
        assert p.bytes_per_rank == 0 and p.step_s == pytest.approx(0.04)


@pytest.mark.parametrize("n", [2, 4, 64])
def test_break_even_is_where_the_steps_are_equal(n):
    shapes = model_shapes("resnet50")
    cluster = Cluster(workers=n, gbit=1, backward_s=0.03, tcp=False)
    c = gpu_projection(FIXED, 2e12)
    for method in SCALECOM_METHODS:
        gbit = decide.break_even_gbit(method, shapes, cluster, c, Settings())
        assert gbit is not None and math.isfinite(gbit), method
        ours = predict(method, shapes, cluster.at(gbit), c).step_s
        dense = predict(DENSE, shapes, cluster.at(gbit), c).step_s
        assert ours == pytest.approx(dense, rel=1e-6)
        assert decide.speedup(method, shapes, cluster.at(gbit / 2), c, Settings()) > 1
        assert decide.speedup(method, shapes, cluster.at(gbit * 2), c, Settings()) < 1


def test_recommended_ratio_is_one_of_the_candidates_and_the_largest_near_the_best():
    shapes = model_shapes("bert-base")
    cluster = Cluster(workers=16, gbit=10, backward_s=0.05)
    r = decide.recommended_ratio(RING, shapes, cluster, FIXED, Settings())
    assert r in decide.RATIOS
    steps = {x: predict(RING, shapes, cluster, FIXED, Settings(ratio=x)).step_s
             for x in decide.RATIOS}
    assert steps[r] <= 1.05 * min(steps.values())
    assert all(steps[x] > 1.05 * min(steps.values()) for x in decide.RATIOS if x > r)


def test_cli_prints_every_method(capsys, tmp_path):
    out = tmp_path / "plan.json"
    main(["--model", "resnet50", "--workers", "64", "--gbit", "25", "--backward-ms", "30",
          "--constants", str(CALIBRATION), "--json", str(out)])
    text = capsys.readouterr().out
    for method in METHODS:
        assert f" {method} " in text, method
    assert "recommended ratio" in text and "Gbit/s" in text
    saved = json.loads(out.read_text())
    assert set(saved["predictions"]) == set(METHODS)
    assert saved["predictions"]["dense"]["speedup"] == 1.0


def test_cli_takes_a_shapes_file_and_a_constant(capsys, tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([[1024, 1024], 1024, [4096, 1024]]))
    main(["--shapes", str(shapes), "--workers", "8", "--gbit", "10", "--backward-ms", "20",
          "--constants", str(CALIBRATION), "--constant", "select_s=1e-9", "--device", "cpu"])
    text = capsys.readouterr().out
    assert "3 tensors, 5,243,904 parameters" in text


def test_state_dict_shapes(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(3, 4), "b": torch.zeros(3),
                               "steps": torch.zeros(1, dtype=torch.long)}}, path)
    assert load_shapes(str(path)) == [(3, 4), (3,)]


@pytest.mark.parametrize("argv, names", [
    (["--model", "resnet50", "--workers", "-4", "--gbit", "1", "--backward-ms", "1"], "--workers"),
    (["--model", "resnet51", "--workers", "4", "--gbit", "1", "--backward-ms", "1"], "--model"),
    (["--shapes", "/no/such/shapes.json", "--workers", "4", "--gbit", "1",
      "--backward-ms", "1"], "--shapes"),
    (["--model", "resnet50", "--workers", "4", "--gbit", "0", "--backward-ms", "1"], "--gbit"),
    (["--model", "resnet50", "--workers", "4", "--gbit", "1", "--backward-ms", "-1"],
     "--backward-ms"),
    (["--model", "resnet50", "--workers", "4", "--gbit", "1", "--backward-ms", "1",
      "--constant", "nonsense=1"], "--constant"),
    (["--model", "resnet50", "--workers", "4", "--gbit", "1", "--backward-ms", "1",
      "--bucket-cap-mb", "0"], "--bucket-cap-mb"),
    (["--model", "resnet50", "--workers", "4", "--gbit", "1", "--backward-ms", "1",
      "--ratio", "1.5"], "--ratio"),
    (["--model", "resnet50", "--workers", "4", "--gbit", "1", "--backward-ms", "1",
      "--constants", "/no/such/file.json"], "--constants"),
])
def test_bad_input_names_the_argument(capsys, argv, names):
    constants = [] if "--constants" in argv else ["--constants", str(CALIBRATION)]
    with pytest.raises(SystemExit) as exit_:
        main(argv + constants)
    assert exit_.value.code == 2
    assert names in capsys.readouterr().err


def test_bad_shapes_file(tmp_path):
    path = tmp_path / "bad.json"
    for text in ("[]", "{\"a\": 1}", "[1, -3]", "[[2, 0]]", "not json"):
        path.write_text(text)
        with pytest.raises(ValueError, match="--shapes"):
            load_shapes(str(path))


def test_calibration_file_round_trip(tmp_path):
    path = tmp_path / "c.json"
    save(FIXED, str(path))
    assert load(str(path)) == FIXED
    data = json.loads(path.read_text())
    data["select_s"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="select_s"):
        load(str(path))
    data["select_s"], data["mystery"] = 1e-9, 3
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="mystery"):
        load(str(path))


def test_calibrate_writes_a_loadable_file(tmp_path):
    """A tiny calibration run (the kernels on 4096 elements, one repeat):
    every cost it writes is positive and the planner reads the file."""
    pytest.importorskip("torch")
    from horovod_scalecom.plan.calibrate import main as calibrate
    path = tmp_path / "host.json"
    calibrate(["--out", str(path), "--numel", "4096", "--repeats", "1"])
    c = load(str(path))
    assert c.device == "cpu" and c.cores >= 1
    for name in ("select_s", "update_s", "clip_s", "reduce_s", "powersgd_s", "call_s",
                 "tcp_s_per_byte",
                 "latency_s"):
        assert getattr(c, name) > 0, name


def test_named_models():
    assert set(MODELS) >= {"resnet50", "bert-base", "transformer-1b"}
    assert sum(numels(model_shapes("transformer-1b"))) == 1_114_386_432
    assert sum(numels(model_shapes("resnet50"))) == 25_557_032
