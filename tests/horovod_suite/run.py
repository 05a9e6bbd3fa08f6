"""Horovod 0.28.1's own TensorFlow optimizer tests (test/parallel) against
ScaleCom, under ``mpirun -np N``: the tests of the Keras DistributedOptimizer
(test_tensorflow2_keras.py, all of them) and of the tape's local sources
(test_tensorflow.py's test_partial_distributed_gradient_tape and
test_model_parallel_model), read from a Horovod git repository at v0.28.1
into a temporary directory, with ScaleCom injected by
tests/horovod_suite/inject.py in each mode:

* ``none``: Horovod alone (its own compression, none);
* ``horovod``: ScaleCom as the compression of Horovod's own wrappers;
* ``ring``: horovod_scalecom's TensorFlow ring in place of Horovod's wrappers.

Each test ends ``passed``, ``skipped``, ``refused`` (a ring wrapper refused
to be built, by name: inject.py wrote the message down) or ``failed``.

    python tests/horovod_suite/run.py [--modes none,horovod,ring] [--np 2]
        [--source /work/.mirror/horovod+horovod/repo] [--min-numel N] [--json out.json]

Horovod's test files need ``parameterized`` and ``mock``, which this
project does not install: the stand-ins in tests/horovod_suite/shims take
their place (parameterized.expand, unittest.mock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_SOURCE = Path("/work/.mirror/horovod+horovod/repo")
TAG = "v0.28.1"
FILES = ["test/parallel/test_tensorflow2_keras.py", "test/parallel/test_tensorflow.py",
         "test/parallel/base_test_tensorflow.py", "test/utils/common.py"]
TF_TESTS = "test/parallel/test_tensorflow.py::TensorFlowTests::"
SELECTED = ["test/parallel/test_tensorflow2_keras.py",
            TF_TESTS + "test_partial_distributed_gradient_tape",
            TF_TESTS + "test_model_parallel_model"]
CONFTEST = """import sys
sys.path[:0] = [{shims!r}, {utils!r}, {here!r}]
from inject import install
install()
if {eager_only!r}:
    # test_tensorflow.py runs each test in TF1 graph mode, then eagerly; the
    # eager half alone (ScaleCom refuses TF1 graph mode when it is built).
    from tensorflow.python.framework import test_util
    test_util.run_all_in_graph_and_eager_modes = lambda cls: cls
"""
# tf.test.TestCase's own method, which pytest collects and skips: not a test.
NOT_TESTS = {"test_session"}


def source_available(source: Path) -> bool:
    """Whether ``source`` is a git repository that has Horovod's v0.28.1 tests."""
    if shutil.which("git") is None or not source.exists():
        return False
    probe = subprocess.run(["git", "--git-dir", str(source), "cat-file", "-e",
                            f"{TAG}:{FILES[0]}"], capture_output=True, timeout=60)
    return probe.returncode == 0


def extract(source: Path, into: Path, eager_only: bool) -> None:
    """Horovod's test files at v0.28.1, and the conftest.py that injects ScaleCom."""
    for path in FILES:
        text = subprocess.run(["git", "--git-dir", str(source), "show", f"{TAG}:{path}"],
                              capture_output=True, text=True, check=True, timeout=60).stdout
        (into / path).parent.mkdir(parents=True, exist_ok=True)
        (into / path).write_text(text)
    (into / "test" / "conftest.py").write_text(CONFTEST.format(
        shims=str(HERE / "shims"), utils=str(into / "test" / "utils"), here=str(HERE),
        eager_only=eager_only))


def outcomes(out: Path, n: int) -> dict[str, dict]:
    """test -> {"outcome", "message"} from every rank's junit file and refusals."""
    per_test: dict[str, list] = {}
    for rank in range(n):
        path = out / f"junit_rank{rank}.xml"
        if not path.exists():
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            if case.get("name") in NOT_TESTS:
                continue
            key = f"{case.get('classname', '').rsplit('.', 2)[-2]}::{case.get('name')}"
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            kind = ("skipped" if case.find("skipped") is not None else
                    "failed" if bad is not None else "passed")
            per_test.setdefault(key, []).append((kind, (bad.get("message") or "")[:300]
                                                 if bad is not None else ""))
    refused: dict[str, str] = {}
    for rank in range(n):
        path = out / f"refusals_rank{rank}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            name = entry["test"].split(" ")[0].split("::")
            refused.setdefault(f"{Path(name[0]).stem}::{name[-1]}", entry["error"])
    result = {}
    for key, kinds in sorted(per_test.items()):
        seen = {k for k, _ in kinds}
        if len(kinds) < n or "failed" in seen:
            outcome = "refused" if key in refused else "failed"
            message = refused.get(key) or next((m for k, m in kinds if k == "failed"),
                                               "a rank wrote no result")
        else:
            outcome, message = ("skipped" if seen == {"skipped"} else "passed"), ""
        result[key] = {"outcome": outcome, "message": message}
    return result


def run_mode(mode: str, n: int, tests: Path, out: Path, min_numel: int | None,
             timeout: float) -> tuple[dict, str]:
    """One mpirun of the selected tests with ScaleCom injected as ``mode``."""
    from horovod_scalecom.check import launch
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]),
               OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", SCALECOM_SUITE_MODE=mode,
               SCALECOM_SUITE_OUT=str(out), HOROVOD_STALL_CHECK_TIME_SECONDS="20",
               HOROVOD_STALL_SHUTDOWN_TIME_SECONDS="60")
    if min_numel is not None:
        env["SCALECOM_SUITE_MIN_NUMEL"] = str(min_numel)
    mpirun = [shutil.which("mpirun") or "mpirun", "-np", str(n), "--oversubscribe",
              "--bind-to", "none", "--mca", "btl", "self,tcp", "--mca", "pml", "ob1"]
    if os.geteuid() == 0:
        mpirun.insert(1, "--allow-run-as-root")
    pytest = (f"exec {sys.executable} -m pytest -p no:cacheprovider -q -rN "
              f"--junitxml={out}/junit_rank$OMPI_COMM_WORLD_RANK.xml " + " ".join(SELECTED))
    code, output, killed = launch.run_bounded(mpirun + ["sh", "-c", pytest], env, tests,
                                              timeout, grace=15.0)
    if killed:
        output += f"\n[killed after {timeout} s]"
    return outcomes(out, n), output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="none,horovod,ring")
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--source", type=Path, default=Path(
        os.environ.get("HOROVOD_SOURCE", DEFAULT_SOURCE)),
        help="a git repository of Horovod with the v0.28.1 tag")
    parser.add_argument("--min-numel", type=int, default=None,
                        help="ScaleCom's min_numel in the injected ScaleCom (default: its own)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--eager-only", action="store_true",
                        help="test_tensorflow.py's tests without their TF1 graph-mode half")
    parser.add_argument("--json", type=Path, default=None, help="write the outcomes here")
    args = parser.parse_args()
    if not source_available(args.source):
        print(f"no Horovod {TAG} tests at {args.source} (pass --source)", file=sys.stderr)
        return 2
    report = {}
    with tempfile.TemporaryDirectory(prefix="horovod-suite-") as tmp:
        tests = Path(tmp) / "horovod"
        extract(args.source, tests, args.eager_only)
        for mode in args.modes.split(","):
            found, output = run_mode(mode, args.np, tests, Path(tmp) / f"out-{mode}",
                                     args.min_numel, args.timeout)
            if not found:
                print(output[-4000:], file=sys.stderr)
            report[mode] = found
            counts = {k: sum(r["outcome"] == k for r in found.values())
                      for k in ("passed", "refused", "failed", "skipped")}
            print(f"{mode}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                  + f" of {len(found)} (np {args.np}"
                  + (", test_tensorflow.py eager only)" if args.eager_only else ")"))
            for key, r in found.items():
                if r["outcome"] != "passed":
                    print(f"  {r['outcome']:8} {key}: {r['message'][:200]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
