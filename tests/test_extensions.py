"""A missing or broken C++ extension fails on import with a message that names
it and says how to rebuild, for each of the three (torch ops, TF ops, ring)."""

import importlib.machinery
import os
import shutil
import subprocess
import sys

import pytest

from mpi import ROOT, requires

PACKAGE = ROOT / "horovod_scalecom"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
CASES = {
    # extension: (import that loads it, what the message must say)
    "_torch_ops": ("import horovod_scalecom.torch._ops", "horovod_scalecom._torch_ops"),
    "_tf_ops": ("import horovod_scalecom.tensorflow._ops", "TensorFlow ops"),
    "_ring": ("from horovod_scalecom.ring import load_ring; load_ring()",
              "horovod_scalecom._ring"),
}


@pytest.mark.parametrize("broken", ["missing", "corrupt"])
@pytest.mark.parametrize("extension", sorted(CASES))
def test_broken_extension_fails_on_import_and_says_how_to_build(extension, broken, tmp_path):
    code, names = CASES[extension]
    requires("tensorflow" if extension == "_tf_ops" else "torch")
    copy = tmp_path / "horovod_scalecom"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", f"{extension}.*"))
    if broken == "corrupt":     # what a half-written or foreign build looks like to the loader
        (copy / f"{extension}{SUFFIX}").write_bytes(b"not a shared object\n" * 64)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    # An editable install (pip install -e) would find the real extension
    # through its own finder; the copy must be the only horovod_scalecom.
    isolate = ("import sys; sys.meta_path = [f for f in sys.meta_path "
               "if '__editable__' not in getattr(f, '__module__', '')]; ")
    proc = subprocess.run([sys.executable, "-c", isolate + code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode != 0, proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError"), proc.stderr
    assert names in last and "scripts/setup.sh" in last, last
