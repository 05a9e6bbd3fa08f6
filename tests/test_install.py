"""`pip install --no-build-isolation .` into an environment that already has
torch, TensorFlow and Horovod: a fresh virtual environment that sees this
one's packages (as a user's existing training environment would have them),
the package built from a copy of the source tree, and every frontend
imported from where pip put it, each framework in a process of its own."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mpi import ROOT

# What a source checkout holds beyond what pip needs: left out of the copy, so
# that nothing built in place (extensions, stamps) can stand in for pip's build.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    "*.so", "*.variant", "*.archs", "docs", "tests", "examples",
                                    "bench-results", "gpu-check", "shared")

IMPORTS = {
    "framework-free": "import horovod_scalecom, horovod_scalecom.reference, "
                      "horovod_scalecom.check; print(horovod_scalecom.__file__)",
    "torch": "import horovod_scalecom.torch as hsc, horovod_scalecom.torch.ddp, "
             "horovod_scalecom.torch._ops; from horovod_scalecom.ring import load_ring; "
             "hsc.ScaleCom, hsc.DistributedOptimizer, load_ring(); print(hsc.__file__)",
    "tensorflow": "import horovod_scalecom.tensorflow as tsc, horovod_scalecom.tensorflow._ops; "
                  "import horovod_scalecom.tensorflow.keras as k; "
                  "tsc.ScaleCom, tsc.DistributedGradientTape, k.ScaleComCallback, "
                  "k.DistributedOptimizer; print(tsc.__file__)",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the new environment's python, its site-packages) after pip installed
    the package into it."""
    pytest.importorskip("venv", reason="the venv module is missing (Debian: python3-venv)")
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    env_dir = tmp / "venv"
    # pip comes from this environment (pip --python), so the new one needs none.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The existing environment's packages (torch, TensorFlow, Horovod, numpy,
    # setuptools) behind the new one's own; its .pth files are not read, so
    # the checkout it points at stays out of sight.
    (site / "existing_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-build-isolation", "--no-index", str(source)],
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return python, site


def run_in(python, code, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("frontend", sorted(IMPORTS))
def test_every_frontend_imports_from_the_installed_package(installed, frontend, tmp_path):
    python, site = installed
    proc = run_in(python, IMPORTS[frontend], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(site / "horovod_scalecom")), proc.stdout


def test_installed_package_carries_its_license_and_passes_its_build_check(installed, tmp_path):
    python, site = installed
    metadata = next(site.glob("horovod_scalecom-*.dist-info"))
    assert "Apache-2.0" in (metadata / "METADATA").read_text()
    assert any("Apache License" in p.read_text() for p in metadata.rglob("LICENSE*"))
    proc = run_in(python, "from horovod_scalecom.check.report import main; "
                  "raise SystemExit(main(['--kinds', 'none']))", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"({site / 'horovod_scalecom'})" in proc.stdout.splitlines()[0], proc.stdout


def test_the_planner_runs_installed_and_the_benchmarks_stay_in_the_checkout(installed, tmp_path):
    # plan/ is the library's; benchmarks/ (scripts run from a checkout) is not installed.
    python, site = installed
    assert not (site / "benchmarks").exists() and not (site / "horovod_scalecom/benchmarks").exists()
    plan = run_in(python, "import sys, runpy; sys.argv[1:] = ['--model', 'resnet50', '--workers', "
                  "'64', '--gbit', '25', '--backward-ms', '30']; "
                  "runpy.run_module('horovod_scalecom.plan', run_name='__main__')", tmp_path)
    assert plan.returncode == 0 and "resnet50" in plan.stdout, plan.stdout + plan.stderr
    out = tmp_path / "host.json"
    calibrate = run_in(python, "from horovod_scalecom.plan.calibrate import main; "
                       f"main(['--out', {str(out)!r}, '--numel', '4096', '--repeats', '1'])",
                       tmp_path)
    assert calibrate.returncode == 0 and out.exists(), calibrate.stdout + calibrate.stderr
