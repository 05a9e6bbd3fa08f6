"""Horovod Elastic under horovodrun on this machine: training with ScaleCom
(and, for reference, without) survives a world that grows, shrinks, or loses
a killed worker.

Each job is ``horovodrun --gloo --min-np 2 --max-np 3`` with
tests/elastic_hosts.sh as the host discovery script; the workers
(tests/workers/elastic_{torch,tf}.py, elastic_common.py) train an MLP on
scikit-learn's digits for 300 global batches and change the world on cue:

- grow: starts on ``localhost:2``; at batch 60 rank 0 switches the hosts to
  ``localhost:3`` and the ranks wait at that commit for the third worker.
- shrink: starts on ``localhost:3``; at batch 60 the hosts become
  ``localhost:2`` (Horovod ends the removed worker).
- kill: starts on ``localhost:2`` + ``127.0.0.1:1``; the worker on 127.0.0.1
  (a host of its own, so that Horovod does not blacklist localhost) SIGKILLs
  itself at the start of batch 75; the others fail in the collective, restore
  the commit of batch 70 and finish as two.

Checked: the job ends with 0; every surviving rank ends with the same
parameters, bitwise; the final world; at least one reset; 300 batches; and
with ScaleCom, a test accuracy within 3 points of ScaleCom's on an unchanged
world of 2 (the module's baseline, one job per framework). The 1-point target
holds for the mean over batch orders: tests/elastic_accuracy.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mpi import ROOT, WORKERS, requires, run_bounded

DISCOVERY = Path(__file__).resolve().parent / "elastic_hosts.sh"
TOTAL = 300
ONE_RUN_BOUND = 0.03    # accuracy a single elastic run may trail the unchanged world's
TIMEOUT = 240           # seconds, the whole job

FRAMEWORKS = {"torch": ("horovod.torch", "elastic_torch.py"),
              "tf": ("horovod.tensorflow", "elastic_tf.py")}

# np, hosts before / after the trigger, final world, Gloo timeout (s).
# kill: a survivor blocked in a receive from the dead rank's neighbour learns
# of the failure only at the Gloo timeout, hence a shorter one there.
SCENARIOS = {
    "grow": (2, "localhost:2", "localhost:3", 3, 30),
    "shrink": (3, "localhost:3", "localhost:2", 2, 30),
    "kill": (3, "localhost:2\n127.0.0.1:1", "localhost:2", 2, 10),
    "none": (2, "localhost:2", "localhost:2", 2, 30),
}


@dataclass
class ElasticJob:
    returncode: int
    output: str
    outdir: Path
    seconds: float

    def report(self) -> str:
        """The job's output, then what every process logged and raised."""
        parts = [self.output]
        for path in sorted(self.outdir.glob("events-*.log")) + sorted(self.outdir.glob("*.err")):
            parts.append(f"--- {path.name}\n{path.read_text()}")
        return "\n".join(parts)

    def check_ok(self) -> "ElasticJob":
        assert self.returncode == 0, f"job failed ({self.returncode}):\n{self.report()}"
        return self

    def results(self) -> list[dict[str, np.ndarray]]:
        """rank{r}.npz of ranks 0, 1, ... (those that finished), in order."""
        found = []
        while (self.outdir / f"rank{len(found)}.npz").exists():
            with np.load(self.outdir / f"rank{len(found)}.npz") as data:
                found.append(dict(data))
        assert found, f"no rank wrote a result:\n{self.report()}"
        extra = sorted(p.name for p in self.outdir.glob("rank*.npz"))[len(found):]
        assert not extra, f"results beyond rank {len(found) - 1}: {extra}\n{self.report()}"
        return found

    def summary(self) -> dict:
        path = self.outdir / "result.json"
        assert path.exists(), f"rank 0 wrote no result.json:\n{self.report()}"
        return json.loads(path.read_text())


def horovodrun() -> str:
    path = Path(sys.executable).with_name("horovodrun")
    if not path.exists():
        pytest.fail(f"{path} not found: run scripts/setup.sh (it installs Horovod)")
    return str(path)


def run_elastic(framework: str, mode: str, scenario: str, tmp: Path,
                timeout: float = TIMEOUT, seed: int | None = None) -> ElasticJob:
    """One horovodrun elastic job; raises with its output if it outlives ``timeout``."""
    np_, before, after, _, gloo_timeout = SCENARIOS[scenario]
    _, worker = FRAMEWORKS[framework]
    outdir = tmp / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    (tmp / "hosts.before").write_text(before + "\n")
    (tmp / "hosts.after").write_text(after + "\n")
    (tmp / "trigger").unlink(missing_ok=True)
    discovery = str(DISCOVERY) if os.access(DISCOVERY, os.X_OK) else f"sh {DISCOVERY}"
    env = dict(os.environ)
    # Horovod 0.28.1 segfaults in hvd.init() after an elastic reset when
    # HOROVOD_FUSION_THRESHOLD is set (seen with 0 and 64 MiB): keep its default.
    env.pop("HOROVOD_FUSION_THRESHOLD", None)
    env.update({
        "PYTHONFAULTHANDLER": "1",      # a crashing worker prints its Python stack
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKERS)]),
        "SCALECOM_ELASTIC_DIR": str(tmp),
        "HOROVOD_CYCLE_TIME": "5",
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    })
    cmd = [horovodrun(), "--gloo", "--network-interface", "lo",
           "-np", str(np_), "--min-np", "2", "--max-np", "3",
           "--gloo-timeout-seconds", str(gloo_timeout), "--elastic-timeout", "60",
           "--host-discovery-script", discovery,
           sys.executable, str(WORKERS / worker), str(outdir),
           "--mode", mode, "--scenario", scenario, "--start-np", str(np_),
           "--total", str(TOTAL)] + ([] if seed is None else ["--seed", str(seed)])
    start = time.monotonic()
    returncode, output, timed_out = run_bounded(cmd, env, timeout)
    job = ElasticJob(returncode, output, outdir, time.monotonic() - start)
    if timed_out:
        raise AssertionError(f"{framework} {mode} {scenario}: horovodrun did not end within "
                             f"{timeout} s (killed):\n{job.report()}")
    print(f"{framework}-{mode}-{scenario}: {job.seconds:.1f} s")
    return job


def needs(framework: str) -> None:
    requires(FRAMEWORKS[framework][0])


def check_world(job: ElasticJob, final: int) -> list[dict[str, np.ndarray]]:
    """Exit 0, `final` ranks that trained all the batches, bitwise equal parameters."""
    job.check_ok()
    results = job.results()
    assert len(results) == final, (f"{len(results)} ranks finished, expected {final}:\n"
                                   f"{job.report()}")
    for rank, res in enumerate(results):
        assert int(res["world_size"]) == final, (rank, int(res["world_size"]))
        assert int(res["batches"]) == TOTAL, (rank, int(res["batches"]))
    first = results[0]
    names = [key for key in first if key.startswith("param/")]
    assert names
    for rank, res in enumerate(results[1:], start=1):
        assert sorted(k for k in res if k.startswith("param/")) == sorted(names)
        for key in names:
            np.testing.assert_array_equal(res[key], first[key], err_msg=f"{key} on rank {rank}")
    return results


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """framework -> ScaleCom's job on an unchanged world of 2, run once per module."""
    jobs = {}

    def get(framework: str) -> ElasticJob:
        if framework not in jobs:
            tmp = tmp_path_factory.mktemp(f"baseline-{framework}")
            jobs[framework] = run_elastic(framework, "scalecom", "none", tmp)
        return jobs[framework]

    return get


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_baseline(framework, baseline):
    needs(framework)
    job = baseline(framework)
    results = check_world(job, 2)
    assert job.summary()["resets"] == 0, job.report()
    accuracy = float(results[0]["accuracy"])
    print(f"{framework} baseline accuracy {accuracy:.4f}")
    assert accuracy >= 0.9, f"ScaleCom reached only {accuracy:.3f} on a fixed world:\n{job.report()}"


@pytest.mark.parametrize("scenario", ["grow", "shrink", "kill"])
@pytest.mark.parametrize("mode", ["dense", "scalecom"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_elastic(framework, mode, scenario, tmp_path, baseline):
    needs(framework)
    final = SCENARIOS[scenario][3]
    job = run_elastic(framework, mode, scenario, tmp_path)
    results = check_world(job, final)
    resets = max(int(res["resets"]) for res in results)
    assert resets >= 1, f"no reset seen:\n{job.report()}"
    assert (tmp_path / "trigger").exists(), job.report()
    accuracy = float(results[0]["accuracy"])
    print(f"{framework}-{mode}-{scenario}: accuracy {accuracy:.4f}, resets {resets}")
    if framework == "torch" and mode == "scalecom":
        # Still compressing in the final world (not gone dense after the reset).
        assert job.summary().get("compression", 0) > 10, job.summary()
    if mode == "dense":
        assert accuracy >= 0.9, f"dense training reached only {accuracy:.3f}:\n{job.report()}"
    else:
        reference = float(check_world(baseline(framework), 2)[0]["accuracy"])
        # One run against one run: the batch order alone moves either by about a
        # point (tests/elastic_accuracy.py measures the 1-point target as a mean
        # over batch orders). Three points, about three times that spread, is
        # what one run can be held to without flaking; ranks that diverge or
        # wait after a reset fail the checks above.
        assert accuracy >= reference - ONE_RUN_BOUND, (
            f"accuracy {accuracy:.4f} after {scenario}, {reference:.4f} on a fixed world "
            f"of 2:\n{job.report()}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_scalecom_without_its_state_is_refused(framework, tmp_path):
    # ScaleCom with Horovod's own State would keep the old world's leaders and
    # configuration after a reset (and wait): refused at the first step.
    needs(framework)
    job = run_elastic(framework, "unheld", "none", tmp_path)
    assert job.returncode != 0, job.report()
    errors = [p.read_text() for p in job.outdir.glob("error-*.err")]
    assert errors and all("but no State holds it" in e for e in errors), job.report()
