"""The benchmark and study harnesses: shapes, the top-k baseline, the
convergence study's simulated workers, and the network cluster's teardown."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from horovod_scalecom.benchmarks.methods import RING, SCALECOM, add_methods_option
from horovod_scalecom.benchmarks.plot_network import NAMES, load, tables
from horovod_scalecom.benchmarks.shapes import MODELS
from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.reference import TopkAllgatherSimulator

from mpi import ROOT, mpirun_command, requires, run_bounded


@pytest.mark.parametrize("model,tensors,params", [("resnet50", 161, 25_557_032),
                                                  ("bert-base", 199, 109_482_240)])
def test_model_shapes_match_the_published_sizes(model, tensors, params):
    shapes = MODELS[model]()
    assert len(shapes) == tensors
    assert sum(int(np.prod(s)) for s in shapes) == params


def test_topk_allgather_baseline_by_brute_force():
    n, numel, k = 3, 50, 5
    sim = TopkAllgatherSimulator(n, ScaleComConfig(ratio=k / numel, min_numel=0))
    rng = np.random.default_rng(0)
    memory = [np.zeros(numel, np.float32) for _ in range(n)]
    for _ in range(4):
        grads = [rng.standard_normal(numel).astype(np.float32) for _ in range(n)]
        out = sim.step("t", grads).outputs[0]
        expected = np.zeros(numel, np.float32)
        for r in range(n):
            p = memory[r] + grads[r]
            top = np.argsort(-np.abs(p), kind="stable")[:k]
            sent = np.zeros(numel, np.float32)
            sent[top] = p[top]
            expected = expected + sent
            p[top] = 0
            memory[r] = p
        np.testing.assert_array_equal(out, expected / np.float32(n))
        for r in range(n):
            np.testing.assert_array_equal(sim.memory["t"][r], memory[r])


def test_study_at_ratio_one_is_exactly_dense_training():
    torch = pytest.importorskip("torch")
    from horovod_scalecom.benchmarks.convergence import RunSpec, train
    torch.set_num_threads(1)
    common = dict(ranks=4, seed=0, lr=0.1, momentum=0.9, epochs=1, train_size=4096)
    dense = train(RunSpec("dense", ratio=1.0, **common))
    full = train(RunSpec("scalecom", ratio=1.0, clip_factor=None, **common))
    assert dense["test_loss"] == full["test_loss"] and dense["test_acc"] == full["test_acc"]
    sparse = train(RunSpec("scalecom", ratio=0.01, **common))
    assert sparse["test_loss"] != dense["test_loss"]
    assert sparse["bytes_per_worker"] < dense["bytes_per_worker"] / 20
    assert 0 < sparse["mean_overlap"] <= 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tc") is None
                    or shutil.which("ip") is None, reason="needs root, ip and tc")
def test_network_cluster_is_removed_when_the_run_fails(tmp_path):
    # An exchange argument the benchmark rejects: every rank fails at once.
    proc = subprocess.run(
        [sys.executable, "-m", "horovod_scalecom.benchmarks.network", "--ranks", "2",
         "--model", "mlp", "--out", str(tmp_path / "net"), "--timeout", "120",
         "--methods", "no-such-method"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert "building the namespaces" in proc.stdout
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hsc-" not in left, left


def test_exchange_benchmark_runs_every_method(tmp_path):
    # Every method of the exchange benchmark, DDP hooks included, on a small
    # model: each reports a step time and fewer bytes than dense where it compresses.
    requires("horovod")
    out = tmp_path / "exchange.json"
    cmd = mpirun_command(2) + [sys.executable, "-m", "horovod_scalecom.benchmarks.exchange",
                               "--model", "mlp", "--rounds", "1", "--steps", "1",
                               "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "SCALECOM_BENCH_MASTER": "127.0.0.1:29541"}
    code, output, killed = run_bounded(cmd, env, 240)
    assert code == 0 and not killed, output
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"powersgd", "ddp hook", "dense", "fp16", "topk", "scalecom",
                         "scalecom ring"}
    for name, row in rows.items():
        assert row["step_s"] > 0, name
        if name not in ("dense", "fp16"):
            assert row["bytes_per_rank"] < rows["dense"]["bytes_per_rank"] / 10, name


def test_older_method_names_are_read_under_the_new_ones(tmp_path):
    # "path A" and "path B" on the command line and in saved JSON (docs/data)
    # are "scalecom" and "scalecom ring"; other names pass through unchanged.
    parser = argparse.ArgumentParser()
    add_methods_option(parser, ("dense", SCALECOM, RING))
    assert parser.parse_args([]).methods == ["dense", "scalecom", "scalecom ring"]
    assert parser.parse_args(["--methods", "dense", "path A", "path B"]).methods == [
        "dense", "scalecom", "scalecom ring"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--methods", "path C"])

    row = {"step_s": 0.5, "comm_s": 0.25, "compress_s": 0.125, "bytes_per_rank": 2e6,
           "compression": 50.0}
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps({"label": "1gbit", "ranks": 2, "rows": [
        {**row, "method": "dense", "step_s": 1.0, "compress_s": None},
        {**row, "method": "path A"}, {**row, "method": "path B", "step_s": 0.25}]}))
    rows = load([saved])["1gbit"][2]
    assert set(rows) == {"dense", "scalecom", "scalecom ring"}
    assert rows["scalecom"]["method"] == "scalecom" and rows["scalecom"]["step_s"] == 0.5
    assert rows["scalecom ring"]["step_s"] == 0.25
    table = tables(load([saved]))
    assert f"| 2 | {NAMES['scalecom']} | 500.0 | 250.0 | 125.0 | 2.000 | 50.0x | 2.00x |" in table
    assert f"| 2 | {NAMES['scalecom ring']} | 250.0 |" in table
    assert "path A" not in table and "path B" not in table

    # The published figures, saved under the older names, load under the new ones.
    published = load([ROOT / "docs" / "data" / "overlap" / "network_resnet50_1gbit_n2.json"])
    assert {"dense", "scalecom", "scalecom ring"} <= set(published["1gbit"][2])
