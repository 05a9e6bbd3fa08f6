"""Horovod 0.28.1's own TensorFlow optimizer tests against the TensorFlow
ring (tests/horovod_suite/run.py): how the runner tells a test the ring
refused by name from one that failed, and, where a Horovod git repository is
given ($HOROVOD_SOURCE: CI has none, and the run takes minutes), the suite
itself: every test that passes with Horovod alone passes on the ring or is
refused when the ring is built, naming what it cannot do."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpi import ROOT

SUITE = ROOT / "tests" / "horovod_suite" / "run.py"
spec = importlib.util.spec_from_file_location("horovod_suite_run", SUITE)
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)

JUNIT = """<testsuites><testsuite>
<testcase classname="test.parallel.test_tensorflow2_keras.Tf2KerasTests" name="test_from_config"/>
<testcase classname="test.parallel.test_tensorflow2_keras.Tf2KerasTests" name="test_sparse_as_dense">
 <failure message="ValueError: refused"/></testcase>
<testcase classname="test.parallel.test_tensorflow2_keras.Tf2KerasTests" name="test_elastic_state">
 <failure message="AssertionError: wrong"/></testcase>
<testcase classname="test.parallel.test_tensorflow2_keras.Tf2KerasTests" name="test_session">
 <skipped/></testcase>
</testsuite></testsuites>"""


def test_outcomes_tell_a_refusal_from_a_failure(tmp_path):
    for rank in range(2):
        (tmp_path / f"junit_rank{rank}.xml").write_text(JUNIT)
    (tmp_path / "refusals_rank1.jsonl").write_text(json.dumps({
        "test": "test/parallel/test_tensorflow2_keras.py::Tf2KerasTests::test_sparse_as_dense "
                "(call)", "error": "ValueError: <ring>: op=hvd.Sum is not supported"}) + "\n")
    found = suite.outcomes(tmp_path, 2)
    assert {k: v["outcome"] for k, v in found.items()} == {
        "test_tensorflow2_keras::test_from_config": "passed",
        "test_tensorflow2_keras::test_sparse_as_dense": "refused",
        "test_tensorflow2_keras::test_elastic_state": "failed"}
    assert "op=hvd.Sum" in found["test_tensorflow2_keras::test_sparse_as_dense"]["message"]
    # A rank that wrote no result fails the test.
    (tmp_path / "junit_rank1.xml").unlink()
    assert suite.outcomes(tmp_path, 2)["test_tensorflow2_keras::test_from_config"][
        "outcome"] == "failed"


@pytest.mark.skipif(not os.environ.get("HOROVOD_SOURCE"),
                    reason="set HOROVOD_SOURCE to a Horovod git repository with the v0.28.1 tag")
def test_horovods_own_tests_pass_or_are_refused_on_the_ring(tmp_path):
    source = Path(os.environ["HOROVOD_SOURCE"])
    if not suite.source_available(source):
        pytest.skip(f"{source} has no Horovod v0.28.1 tests")
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--modes", "none,ring", "--source",
                           str(source), "--json", str(report)], capture_output=True, text=True,
                          timeout=2400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(report.read_text())
    baseline = [k for k, v in found["none"].items() if v["outcome"] == "passed"]
    assert len(baseline) == 15, found["none"]
    for key in baseline:
        ring = found["ring"][key]
        assert ring["outcome"] in ("passed", "refused"), (key, ring)
        if ring["outcome"] == "refused":
            assert "not supported" in ring["message"], (key, ring)
