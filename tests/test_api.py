"""Every frontend's signature takes its defaults from ScaleComConfig, so a
default changed there changes the torch and TensorFlow compressors and the
DDP hook alike. Each frontend is read in its own process: horovod.torch and
horovod.tensorflow never share one."""

import json
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from horovod_scalecom.config import DEFAULTS, ScaleComConfig
from mpi import ROOT, requires

READ = """
import inspect, json, sys
import importlib
module, name = sys.argv[1], sys.argv[2]
target = getattr(importlib.import_module(module), name)
params = inspect.signature(target.__init__).parameters
print(json.dumps({k: p.default for k, p in params.items()
                  if p.default is not inspect.Parameter.empty}))
"""

FRONTENDS = [("horovod.torch", "horovod_scalecom.torch", "ScaleCom", ()),
             ("horovod.torch", "horovod_scalecom.torch.ddp", "ScaleComHookState",
              ("stagger_leaders",)),          # the hook has one leader per step
             ("horovod.tensorflow", "horovod_scalecom.tensorflow", "ScaleCom", ())]


def test_api_md_states_the_defaults():
    # docs/api.md's table of knobs: | `name` | default | ... |
    text = (ROOT / "docs" / "api.md").read_text()
    for f in fields(ScaleComConfig):
        row = re.search(rf"^\| `{f.name}` \| ([^|]+) \|", text, re.M)
        assert row, f"docs/api.md has no row for {f.name}"
        value, cell = getattr(DEFAULTS, f.name), row.group(1).strip()
        if value is None or isinstance(value, bool):
            assert cell == str(value), (f.name, cell, value)
        else:
            assert float(cell) == value, (f.name, cell, value)


@pytest.mark.parametrize("framework,module,name,absent", FRONTENDS,
                         ids=[f"{m}.{n}" for _, m, n, _ in FRONTENDS])
def test_frontend_defaults_are_the_configs(framework, module, name, absent):
    requires(framework)
    proc = subprocess.run([sys.executable, "-c", READ, module, name], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    defaults = json.loads(proc.stdout.strip().splitlines()[-1])
    knobs = [f.name for f in fields(ScaleComConfig) if f.name not in absent]
    assert {k: defaults[k] for k in knobs} == {k: getattr(DEFAULTS, k) for k in knobs}
