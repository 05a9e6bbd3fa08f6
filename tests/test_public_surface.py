"""The public surface is what docs/api.md documents: its table of public
modules equals their ``__all__``; those modules define nothing else without a
leading underscore; every public method and property of their classes is
described in the class's section of api.md. Each framework's modules are read
in a process of their own (horovod.torch and horovod.tensorflow never share
one)."""

import json
import os
import re
import subprocess
import sys

import pytest

from mpi import ROOT, requires

API = (ROOT / "docs" / "api.md").read_text()

# Which process reads a module: the framework its import loads.
FRAMEWORK = {"horovod_scalecom.torch": "horovod.torch",
             "horovod_scalecom.tensorflow": "horovod.tensorflow"}

READ = r"""
import importlib, inspect, json, sys
out = {}
for module_name in sys.argv[1:]:
    module = importlib.import_module(module_name)
    exported = list(getattr(module, "__all__", []) or [])
    defined = sorted(
        name for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module_name)
    classes = {}
    for name in exported:
        obj = getattr(module, name, None)
        if obj is None:
            continue
        if inspect.isfunction(obj) and name == "DistributedOptimizer":
            # A wrapper that builds a subclass of the user's optimizer: its
            # methods are those of the module's _RingOptimizer.
            obj = getattr(module if hasattr(module, "_RingOptimizer") else
                          importlib.import_module(obj.__module__), "_RingOptimizer", None)
        if not inspect.isclass(obj):
            continue
        ours = [c for c in obj.__mro__ if c.__module__.startswith("horovod_scalecom")]
        theirs = [c for c in obj.__mro__ if c not in ours]
        names = {n for c in ours for n in vars(c) if not n.startswith("_")}
        classes[name] = sorted(n for n in names if not any(hasattr(c, n) for c in theirs))
    out[module_name] = {"all": exported, "defined": defined, "missing": [
        n for n in exported if not hasattr(module, n)], "classes": classes}
print(json.dumps(out))
"""


def table() -> dict[str, list[str]]:
    """docs/api.md's "Public modules" table: module -> names."""
    section = API.split("## Public modules", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.]+)` \| (.+) \|$", section, re.M)
    assert len(rows) >= 10, "docs/api.md's table of public modules is missing"
    return {module: re.findall(r"`(\w+)`", names) for module, names in rows}


def framework_of(module: str) -> str | None:
    return next((f for prefix, f in FRAMEWORK.items() if module.startswith(prefix)), None)


def read(modules: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", READ, *modules], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PARTS = (("horovod_scalecom.tensorflow.keras", "## Keras"),
         ("horovod_scalecom.tensorflow", "## TensorFlow"),
         ("horovod_scalecom.torch", "## PyTorch"),
         ("horovod_scalecom", "## Framework-free"))


def sections(part: str) -> list[tuple[str, str]]:
    """(heading, text) of each ### section of api.md's part ``part``."""
    text = API.split("\n" + part, 1)[1].split("\n## ", 1)[0]
    pieces = re.split(r"^(### .*)$", text, flags=re.M)
    return [(pieces[i], pieces[i + 1]) for i in range(1, len(pieces) - 1, 2)]


def section_of(module: str, name: str) -> str:
    """What api.md says of ``module.name``: the sections of the module's part
    whose heading names it, else the module's own section if that mentions it."""
    part = next(p for prefix, p in PARTS if module.startswith(prefix))
    named = [h + t for h, t in sections(part)
             if re.search(rf"[`.]{re.escape(name)}(\(|`)", h)]
    if named:
        return "\n".join(named)
    own = [h + t for h, t in sections(part) if f"`{module}`" in h and f"`{name}" in t]
    return "\n".join(own)


GROUPS = {None: None, "horovod.torch": None, "horovod.tensorflow": None}
for _module in table():
    GROUPS[framework_of(_module)] = (GROUPS[framework_of(_module)] or []) + [_module]


@pytest.mark.parametrize("framework", [f for f in GROUPS if GROUPS[f]],
                         ids=lambda f: f or "framework-free")
def test_public_modules_are_what_api_md_documents(framework):
    if framework:
        requires(framework)
    documented = {m: names for m, names in table().items() if framework_of(m) == framework}
    found = read(list(documented))
    problems = []
    for module, names in documented.items():
        got = found[module]
        if sorted(got["all"]) != sorted(names):
            problems.append(f"{module}: __all__ {sorted(got['all'])}, api.md {sorted(names)}")
        if got["missing"]:
            problems.append(f"{module}: __all__ names what it lacks: {got['missing']}")
        extra = sorted(set(got["defined"]) - set(got["all"]))
        if extra:
            problems.append(f"{module} defines public names outside __all__: {extra} "
                            "(document them, or give them a leading underscore)")
        for name in names:
            if name != "__version__" and not section_of(module, name):
                problems.append(f"{module}.{name} is not described in docs/api.md")
        for cls, members in got["classes"].items():
            text = section_of(module, cls)
            for member in members:
                if not re.search(rf"[`.]{member}\b", text):
                    problems.append(f"{module}.{cls}.{member} is public but not described "
                                    "under its heading in docs/api.md")
    assert not problems, "\n".join(problems)


def test_the_check_reads_what_it_should():
    # The table is parsed, and a section is found by the name in its heading.
    assert table()["horovod_scalecom.torch.ddp"] == ["ScaleComHookState", "scalecom_hook"]
    assert "load_state_dict(sd, strict=True)" in section_of("horovod_scalecom.torch.ddp",
                                                             "ScaleComHookState")
    assert "tf.train.Checkpoint" in section_of("horovod_scalecom.tensorflow", "ScaleCom")
    assert "tf.train.Checkpoint" not in section_of("horovod_scalecom.torch", "ScaleCom")
    assert "accumulate" in section_of("horovod_scalecom.reference", "accumulate")
    assert section_of("horovod_scalecom.torch", "no_such_name") == ""
