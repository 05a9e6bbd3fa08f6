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

from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.plan.workload import MODELS
from horovod_scalecom.reference import TopkAllgatherSimulator

from benchmarks.methods import RING, SCALECOM, add_methods_option
from benchmarks.plot_network import NAMES, ORDER, load, tables

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
    from benchmarks.convergence import RunSpec, train
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
        [sys.executable, "-m", "benchmarks.network", "--ranks", "2",
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
    cmd = mpirun_command(2) + [sys.executable, "-m", "benchmarks.exchange",
                               "--model", "mlp", "--rounds", "1", "--steps", "1",
                               "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "SCALECOM_BENCH_MASTER": "127.0.0.1:29541"}
    code, output, killed = run_bounded(cmd, env, 240)
    assert code == 0 and not killed, output
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ddp dense", "ddp fp16", "powersgd", "ddp hook", "dense", "fp16",
                         "topk", "scalecom", "scalecom ring"}
    dense = rows["dense"]["bytes_per_rank"]
    for name, row in rows.items():
        assert row["step_s"] > 0, name
        if name in ("fp16", "ddp fp16"):
            assert row["bytes_per_rank"] == dense / 2, name
        elif name == "ddp dense":
            assert row["bytes_per_rank"] == dense, name
        elif name != "dense":
            assert row["bytes_per_rank"] < dense / 10, name


def test_methods_take_the_current_names_and_the_tables_show_them(tmp_path):
    parser = argparse.ArgumentParser()
    add_methods_option(parser, ("dense", SCALECOM, RING))
    assert parser.parse_args([]).methods == ["dense", "scalecom", "scalecom ring"]
    assert parser.parse_args(["--methods", "dense", "scalecom ring"]).methods == [
        "dense", "scalecom ring"]
    for name in ("path A", "path C"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--methods", name])

    row = {"step_s": 0.5, "comm_s": 0.25, "compress_s": 0.125, "bytes_per_rank": 2e6,
           "compression": 50.0}
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"label": "1gbit", "ranks": 2, "rows": [
        {**row, "method": "dense", "step_s": 1.0, "compress_s": None},
        {**row, "method": SCALECOM}, {**row, "method": RING, "step_s": 0.25}]}))
    rows = load([saved])["1gbit"][2]
    assert set(rows) == {"dense", "scalecom", "scalecom ring"}
    assert rows["scalecom"]["step_s"] == 0.5 and rows["scalecom ring"]["step_s"] == 0.25
    table = tables(load([saved]))
    assert f"| 2 | {NAMES['scalecom']} | 500.0 | 250.0 | 125.0 | 2.000 | 50.0x | 2.00x |" in table
    assert f"| 2 | {NAMES['scalecom ring']} | 250.0 |" in table


def test_the_published_figures_name_their_methods_as_the_benchmarks_do():
    # docs/data's network, overlap and DDP runs and the two soak runs: every
    # method (each row's, and each rank's within it) is one the benchmarks run.
    data = ROOT / "docs" / "data"
    runs = [json.loads(p.read_text()) for pattern in ("network_*.json", "overlap/*.json",
                                                      "ddp/*.json")
            for p in sorted(data.glob(pattern))]
    assert len(runs) == 21
    rows = [r for run in runs for r in run["rows"]]
    per_rank = [p for r in rows for p in r.get("per_rank", []) if isinstance(p, dict)]
    methods = {r["method"] for r in rows + per_rank if "method" in r}
    assert {SCALECOM, RING} <= methods <= set(ORDER), methods
    assert sum("method" in p for p in per_rank) > 0
    for name, method in (("soak_scalecom.json", SCALECOM), ("soak_scalecom_ring.json", RING)):
        assert json.loads((data / name).read_text())["method"] == method
    published = load([data / "overlap" / "network_resnet50_1gbit_n2.json"])
    assert {"dense", "scalecom", "scalecom ring"} <= set(published["1gbit"][2])


def test_study_tasks_and_models_compress_their_large_tensors():
    pytest.importorskip("torch")
    from benchmarks.tasks import load_task, make_model
    for task, features, train, test in (("digits", 64, 1200, 597), ("mnist1d", 40, 4000, 1000)):
        pytest.importorskip("sklearn" if task == "digits" else "mnist1d")
        x, y, x_test, y_test = load_task(task)
        assert x.shape == (train, features) and x_test.shape == (test, features)
        assert sorted(set(y.tolist())) == list(range(10))
        for model in ("mlp", "cnn"):
            net = make_model(task, model, seed=0)
            assert net(x[:3]).shape == (3, 10)
            sizes = [p.numel() for p in net.parameters()]
            # Most of every model goes through the compressor (min_numel 1024).
            assert sum(s for s in sizes if s >= 1024) > 0.9 * sum(sizes), (task, model, sizes)


def test_ratio_warmup_follows_dgc_stages_down_to_the_ratio():
    pytest.importorskip("torch")
    from benchmarks.convergence import RunSpec, warmup_ratio
    spec = RunSpec("scalecom", 4, 0.01, 0, lr=0.1, momentum=0.9, epochs=1, ratio_warmup_steps=8)
    assert [warmup_ratio(spec, t) for t in range(10)] == [
        0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.01, 0.01, 0.01, 0.01]


def test_diagnostics_of_a_hand_made_step():
    from benchmarks.diagnostics import step_figures
    memories = [np.zeros(4, np.float32), np.array([0, 0, 2, 0], np.float32)]
    grads = [np.array([3, 1, 0, 0], np.float32), np.array([3, -1, 0, 0.5], np.float32)]
    # p_0 = (3, 1, 0, 0), p_1 = (3, -1, 2, 0.5); mean p = (3, 0, 1, 0.25); mean g = (3, 0, 0, 0.25)
    f = step_figures(memories, grads, np.array([0]), lag=np.array([0, 0, 0.5, 0.25]),
                     after=np.array([0, 0, 1, 0]))
    assert f["overlap_own"] == 1.0 and f["overlap_mean"] == 1.0
    assert f["captured"] == pytest.approx(9 / (9 + 1 + 0.0625))
    assert f["memory_ratio"] == pytest.approx(1 / np.sqrt(9 + 0.0625))
    assert f["lag"] == pytest.approx(np.sqrt(0.25 + 0.0625) / np.sqrt(9 + 0.0625))
    # k = 2: worker 0's own pair is {0, 1}, worker 1's and the mean's {0, 2}.
    pair = step_figures(memories, grads, np.array([0, 2]), lag=np.zeros(4), after=np.zeros(4))
    assert pair["overlap_own"] == 0.75 and pair["overlap_mean"] == 1.0


def test_momentum_correction_at_ratio_one_is_momentum_sgd():
    torch = pytest.importorskip("torch")
    from benchmarks.convergence import RunSpec, train
    torch.set_num_threads(1)
    common = dict(ranks=4, seed=0, lr=0.1, momentum=0.9, epochs=1, train_size=2048)
    dense = train(RunSpec("dense", ratio=1.0, **common))
    moved = train(RunSpec("scalecom", ratio=1.0, clip_factor=None, beta=1.0,
                          momentum_correction=True, **common))
    # The workers' velocities average to the velocity of the average, up to rounding.
    np.testing.assert_allclose(moved["test_loss"], dense["test_loss"], rtol=1e-4)
    masked = train(RunSpec("scalecom", ratio=1.0, clip_factor=None, beta=1.0,
                           momentum_correction=True, factor_masking=True, **common))
    assert masked["test_loss"] != dense["test_loss"]     # masking every entry drops the momentum


@pytest.mark.parametrize("clip_factor,warmup,stagger", [(2.0, 0, True), (None, 2, False),
                                                         (1.0, 0, False)])
def test_batched_workers_are_the_reference_to_the_bit(clip_factor, warmup, stagger):
    from benchmarks.batched import BatchedHorovodPath
    from horovod_scalecom.reference import HorovodPathSimulator
    n = 5
    config = ScaleComConfig(ratio=0.03, beta=0.3, clip_factor=clip_factor, warmup_steps=warmup,
                            min_numel=64, stagger_leaders=stagger)
    ref, fast = HorovodPathSimulator(n, config), BatchedHorovodPath(n, config)
    # memory_beta far above any memory's level count: the config's beta throughout.
    unbounded = BatchedHorovodPath(n, config, memory_beta=1e30)
    rng = np.random.default_rng(1)
    tensors = (("w", 5000, np.float32), ("h", 3000, np.float16), ("b", 40, np.float32),
               ("i", 300, np.int32))
    for step in range(7):
        for name, numel, dtype in tensors:
            # Growing gradients make the clip act; a NaN and an Inf try the memory,
            # and at step 4 a NaN in every row reaches the leader's selection.
            grads = [(rng.standard_normal(numel) * 3 * (1 + step)).astype(dtype)
                     for _ in range(n)]
            if step == 3 and dtype != np.int32:
                grads[1][7], grads[2][8] = np.nan, np.inf
            if step == 4 and dtype != np.int32:
                for g in grads:
                    g[11] = np.nan
            want, got = ref.step(name, grads), fast.step(name, grads)
            also = unbounded.step(name, grads)
            for result in (got, also):
                np.testing.assert_array_equal(result.outputs[0], want.outputs[0])
                assert result.leader == want.leader and result.bytes_sent == want.bytes_sent
                if want.indices is not None:
                    np.testing.assert_array_equal(result.indices, want.indices)
            if step == 4 and want.indices is not None:
                assert 11 in want.indices.tolist() and np.isnan(want.outputs[0][11])
            for r in range(n):
                np.testing.assert_array_equal(fast.tensors[name].memory[r], ref.memory(name, r))


def test_a_small_memory_beta_takes_in_less_of_the_residue():
    from benchmarks.batched import BatchedHorovodPath
    config = ScaleComConfig(ratio=0.01, beta=1.0, min_numel=64)
    plain, bounded = BatchedHorovodPath(3, config), BatchedHorovodPath(3, config, memory_beta=0.5)
    rng = np.random.default_rng(3)
    for _ in range(6):
        grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
        plain.step("w", grads), bounded.step("w", grads)
    # Beta 1 keeps every unsent entry whole; the bound lets in less, so the memory is smaller.
    assert (np.linalg.norm(bounded.tensors["w"].memory, axis=1)
            < 0.9 * np.linalg.norm(plain.tensors["w"].memory, axis=1)).all()


def test_the_lag_is_the_mean_memory_over_beta():
    torch = pytest.importorskip("torch")
    from benchmarks.convergence import RunSpec, train
    torch.set_num_threads(1)
    common = dict(ranks=4, ratio=0.01, seed=0, lr=0.1, momentum=0.9, epochs=1, steps=24,
                  train_size=8192)
    ef = train(RunSpec("scalecom", beta=1.0, **common), overlap_every=4)["figures"]
    assert len(ef) == 3     # the three tensors above min_numel, sampled
    for figures in ef.values():
        assert figures["lag"] == pytest.approx(figures["memory_ratio"], rel=1e-3)
    # The filter takes in beta of an unsent entry and keeps 1 - beta of a sent
    # one, so the optimizer's backlog is the memory scaled up by 1 / beta.
    lpf = train(RunSpec("scalecom", beta=0.1, **common), overlap_every=4)["figures"]
    assert len(lpf) == 3
    for figures in lpf.values():
        assert figures["lag"] == pytest.approx(figures["memory_ratio"] / 0.1, rel=1e-3)


def test_batched_sum_of_squares_keeps_the_reference_order():
    from benchmarks.batched import sum_squares_rows
    from horovod_scalecom.reference.clip import sum_squares
    rng = np.random.default_rng(2)
    for numel in (1, 7, 4096, 4097, 70_001):
        # Magnitudes over many decades: another order would change the last bits.
        x = (rng.standard_normal((3, numel)) * 10.0 ** rng.integers(-6, 6, (3, numel)))
        x = x.astype(np.float32)
        assert sum_squares_rows(x).tolist() == [sum_squares(row) for row in x]


@pytest.mark.parametrize("numels,ratio", [
    ({"0.weight": 10240, "2.weight": 65536, "4.weight": 2560, "0.bias": 256}, 0.0025),  # the MLP
    ({"3.weight": 3072, "5.weight": 3072, "8.weight": 1600, "1.weight": 160}, 0.01),    # the CNN
    ({"a": 1024, "b": 5000, "c": 1_000_000, "d": 1023}, 0.001)])
def test_per_layer_k_policies(numels, ratio):
    from benchmarks.batched import layer_k
    config = ScaleComConfig(ratio=ratio)
    compressed = {name: n for name, n in numels.items() if n >= config.min_numel}
    by_ratio = layer_k(numels, config, "ratio")
    assert by_ratio == {name: config.k(n) for name, n in compressed.items()}
    floor = layer_k(numels, config, "floor", k_floor=40)
    assert floor == {name: min(n, max(40, config.k(n))) for name, n in compressed.items()}
    assert sum(floor.values()) > sum(by_ratio.values())
    shared = layer_k(numels, config, "equal-bytes")
    assert shared.keys() == by_ratio.keys()
    assert sum(shared.values()) == sum(by_ratio.values())
    # Each k is its sqrt(numel) share of the budget, rounded either way.
    budget, total = sum(by_ratio.values()), sum(np.sqrt(n) for n in compressed.values())
    for name, n in compressed.items():
        assert abs(shared[name] - budget * np.sqrt(n) / total) < 1
    smallest, largest = min(compressed, key=compressed.get), max(compressed, key=compressed.get)
    assert shared[smallest] >= by_ratio[smallest] and shared[largest] < by_ratio[largest]
    with pytest.raises(ValueError, match="unknown k policy"):
        layer_k(numels, config, "sqrt")


def test_the_batched_path_sends_the_per_layer_k():
    from horovod_scalecom import bytes_model
    from benchmarks.batched import BatchedHorovodPath
    config = ScaleComConfig(ratio=0.01, min_numel=64)
    sim = BatchedHorovodPath(3, config, k={"w": 37})
    rng = np.random.default_rng(4)
    for _ in range(3):
        grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
        w, v = sim.step("w", grads), sim.step("v", grads)
        assert len(w.indices) == 37 and w.bytes_sent[0] == bytes_model.horovod_path(37, 3)
        assert len(v.indices) == config.k(1000)     # a tensor k does not name: the ratio's


def test_the_topk_baseline_takes_the_per_layer_k():
    from horovod_scalecom import bytes_model
    from benchmarks.batched import LayerKTopk
    config = ScaleComConfig(ratio=0.01, min_numel=64)
    # k as the ratio gives it: the reference's baseline to the bit.
    ref = TopkAllgatherSimulator(3, config)
    same = LayerKTopk(3, config, {"w": config.k(1000)})
    other = LayerKTopk(3, config, {"w": 37})
    rng = np.random.default_rng(5)
    for _ in range(3):
        grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
        want, got = ref.step("w", grads), same.step("w", grads)
        np.testing.assert_array_equal(got.outputs[0], want.outputs[0])
        out = other.step("w", grads)
        # Each worker sends its own 37; the supports overlap in part.
        assert 37 <= np.count_nonzero(out.outputs[0]) <= 3 * 37
        assert out.bytes_sent[0] == bytes_model.topk_allgather(37, 3)
        assert other.step("v", grads).bytes_sent[0] == bytes_model.topk_allgather(config.k(1000), 3)
    for r in range(3):
        np.testing.assert_array_equal(same.memory["w"][r], ref.memory["w"][r])


def test_the_study_refuses_a_per_layer_k_it_cannot_run():
    pytest.importorskip("torch")
    from benchmarks.convergence import RunSpec
    common = dict(ranks=4, ratio=0.01, seed=0, lr=0.1, momentum=0.9, epochs=1)
    with pytest.raises(ValueError, match="dense sends every value"):
        RunSpec("dense", k_policy="floor", **common)
    with pytest.raises(ValueError, match="ratio warm-up"):
        RunSpec("scalecom", k_policy="equal-bytes", ratio_warmup_steps=8, **common)
    with pytest.raises(ValueError, match="unknown k policy"):
        RunSpec("scalecom", k_policy="sqrt", **common)


def test_the_k_table_compares_policies_at_their_bytes():
    from benchmarks.plot_study import k_table
    base = dict(task="mnist1d", model="cnn", ranks=4, ratio=0.0025, beta=1.0, k_floor=32)
    runs = [dict(base, method="dense", ratio=1.0, seed=s, final_acc=a, bytes_per_worker=1e6)
            for s, a in ((0, 0.90), (1, 0.92))]
    runs += [dict(base, method="scalecom", k_policy=p, seed=s, final_acc=a, bytes_per_worker=b)
             for p, b in (("ratio", 1e6), ("floor", 2.5e6)) for s, a in ((0, 0.80), (1, 0.84))]
    runs += [dict(base, method="topk", beta=float("nan"), k_policy="ratio", seed=0,
                  final_acc=0.88, bytes_per_worker=3e6)]
    rows = k_table(runs).splitlines()
    assert rows[2].startswith("| mnist1d/cnn | 4 | - | - | dense | 91.0 ± 1.4 [2] |")
    assert rows[3] == ("| mnist1d/cnn | 4 | 1/400 | 1 | k = ratio x numel | 82.0 ± 2.8 [2] (-9.0)"
                       " | 1.00 | 1.00x |")
    assert rows[4] == ("| mnist1d/cnn | 4 | 1/400 | 1 | k floor 32 | 82.0 ± 2.8 [2] (-9.0)"
                       " | 2.50 | 2.50x |")
    assert rows[5] == ("| mnist1d/cnn | 4 | 1/400 | - | top-k allgather, k = ratio x numel"
                       " | 88.0 [1] (-3.0) | 3.00 | 1.00x |")
