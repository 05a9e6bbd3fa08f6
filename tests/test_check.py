"""The self-check (python -m horovod_scalecom.check): it runs every exchange
on 2 ranks and passes on a good build, and it fails, saying what to do, when
a result differs from the reference or an extension is broken."""

import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np

from horovod_scalecom.check import expected, report
from mpi import ROOT


def run_check(cwd, *args, env=None, timeout=300):
    # python -m puts the working directory first on sys.path: run it
    # elsewhere than the checkout, so that the package found is the one meant.
    return subprocess.run([sys.executable, "-m", "horovod_scalecom.check", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_compare_names_every_kind_of_difference():
    want = expected.horovod_path()
    assert expected.compare({0: want, 1: dict(want)}, want) == []
    key = "out/2/w1"
    wrong_value = dict(want)
    wrong_value[key] = want[key] * np.float32(1.001)
    wrong_support = dict(want)
    wrong_support[key] = want[key].copy()
    wrong_support[key].flat[np.flatnonzero(want[key] == 0)[0]] = 1.0
    nan = dict(want)
    nan[key] = want[key].copy()
    nan[key].flat[np.flatnonzero(want[key])[0]] = np.nan
    missing = {k: v for k, v in want.items() if k != key}
    problems = expected.compare({0: wrong_value, 1: wrong_support, 2: nan, 3: missing}, want)
    assert [p.split(",")[0] for p in problems] == ["rank 0", "rank 1", "rank 2",
                                                   "rank 3 returned no out/2/w1"]
    assert "differs from the reference" in problems[0] and key in problems[0]
    assert "1 entries selected differently" in problems[1]
    assert "differs from the reference" in problems[2]


def test_the_ring_and_the_horovod_path_have_different_references():
    # The ring's chunk owners select other indices than the Horovod path's
    # leader: a worker of one kind judged by the other's reference must fail.
    assert expected.compare({0: expected.ring()}, expected.horovod_path())


def test_check_passes_every_exchange_on_this_build(tmp_path):
    proc = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kind, title in report.KINDS.items():
        line = next(line for line in proc.stdout.splitlines() if title in line)
        assert re.match(r"\s+ok\s", line), line
        assert "equal to the reference" in line, line
    assert "Horovod 0.28.1 for PyTorch: built with MPI, Gloo" in proc.stdout
    assert "MPI: mpirun (Open MPI)" in proc.stdout
    assert "all checks passed" in proc.stdout


def test_an_exchange_that_differs_from_the_reference_fails(monkeypatch):
    # The workers run with the check's configuration; the reference judging
    # them here runs with another ratio, as a miscompiled selection would.
    monkeypatch.setattr(expected, "CONFIG", replace(expected.CONFIG, ratio=0.1))
    status, text, fix, _ = report.run_exchange("torch", timeout=180)
    assert status == "FAIL", text
    assert "differs from the NumPy reference" in text and "more" in text
    assert "scripts/setup.sh" in fix


def test_a_broken_extension_fails_the_check_and_says_how_to_rebuild(tmp_path):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    copy = tmp_path / "horovod_scalecom"
    shutil.copytree(ROOT / "horovod_scalecom", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / f"_ring{suffix}").write_bytes(b"not a shared object\n" * 64)
    proc = run_check(tmp_path, "--kinds", "ring", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.strip().startswith("FAIL")]
    assert len(failed) == 1, proc.stdout
    assert "the ScaleCom ring does not load" in lines[failed[0]], proc.stdout
    assert "scripts/setup.sh" in lines[failed[0] + 1], proc.stdout
    assert re.search(r"skip\s+PyTorch, the ScaleCom ring: the ring does not load", proc.stdout)
    assert f"({copy})" in lines[0], lines[0]
