"""The flags and keywords the docs show a user are ones the code takes.

README.md and docs/*.md show commands (``python -m horovod_scalecom...``,
``python -m benchmarks...``, ``python examples/...``) with flags, and calls of ScaleCom,
ScaleComHookState and the DistributedOptimizers with keywords. A renamed or
removed flag or argument leaves a command that fails for whoever copies it;
these tests read every one and check it against each command's ``--help``
and each class's signature. Signatures are read in a subprocess per
framework: horovod.torch and horovod.tensorflow never share a process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache


from doc_commands import FLAG, Shown, shown_flags, shown_keywords
from mpi import ROOT, requires

requires("horovod")

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def shown(reader) -> list[Shown]:
    return [s for path in DOCS for s in reader(path.read_text(), path.name)]


@lru_cache(maxsize=None)
def accepted_flags(target: str) -> frozenset[str]:
    """The flags ``target`` (a module or an example script) lists in --help."""
    command = ([sys.executable, target] if target.endswith(".py")
               else [sys.executable, "-m", target])
    run = subprocess.run([*command, "--help"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, f"{' '.join(command)} --help failed:\n{run.stderr[-2000:]}"
    return frozenset(m.group(1) for m in FLAG.finditer(run.stdout))


# Commands that hand the flags they do not know to another (their --help says so).
PASSES_ON = {"benchmarks.network": "benchmarks.exchange"}


def flag_problems(flags: list[Shown]) -> list[str]:
    def accepted(target: str) -> frozenset[str]:
        more = PASSES_ON.get(target)
        return accepted_flags(target) | (accepted_flags(more) if more else frozenset())
    return [f"{s.where}: {s.target} has no --{s.name}"
            for s in flags if s.name not in accepted(s.target)]


# Each framework's classes, read in its own process: the keywords each takes
# by name (a **kwargs that exists only to refuse Horovod's arguments by name
# does not count).
SIGNATURES = """
import importlib, inspect, json, sys
out = {}
for spec in sys.argv[1:]:
    module, name = spec.rsplit(":", 1)
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    out[spec] = [p for p, v in params.items()
                 if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
print("SIGNATURES " + json.dumps(out))
"""
TORCH = ["horovod_scalecom.torch:ScaleCom", "horovod_scalecom.torch:DistributedOptimizer",
         "horovod_scalecom.torch.ddp:ScaleComHookState", "horovod.torch:DistributedOptimizer"]
TENSORFLOW = ["horovod_scalecom.tensorflow:ScaleCom",
              "horovod_scalecom.tensorflow.keras:DistributedOptimizer",
              "horovod.tensorflow.keras:DistributedOptimizer"]


@lru_cache(maxsize=None)
def signatures() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for specs in (TORCH, TENSORFLOW):
        run = subprocess.run([sys.executable, "-c", SIGNATURES, *specs], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
        line = [x for x in run.stdout.splitlines() if x.startswith("SIGNATURES ")]
        assert run.returncode == 0 and line, run.stderr[-2000:]
        out.update({k: set(v) for k, v in json.loads(line[0][11:]).items()})
    return out


def accepted_keywords(target: str) -> set[str]:
    """The keywords of what a documented call can mean. A bare ScaleCom is
    either framework's; ``hvd.DistributedOptimizer`` is Horovod's, any other
    DistributedOptimizer this package's ring (torch or Keras)."""
    sig = signatures()
    prefix, name = target.rpartition(".")[0], target.rpartition(".")[2]
    if name == "ScaleComHookState":
        return sig["horovod_scalecom.torch.ddp:ScaleComHookState"]
    if name == "ScaleCom":
        return sig["horovod_scalecom.torch:ScaleCom"] | sig["horovod_scalecom.tensorflow:ScaleCom"]
    if prefix.split(".")[0] in ("hvd", "hvd_keras", "horovod"):
        return (sig["horovod.torch:DistributedOptimizer"]
                | sig["horovod.tensorflow.keras:DistributedOptimizer"])
    return (sig["horovod_scalecom.torch:DistributedOptimizer"]
            | sig["horovod_scalecom.tensorflow.keras:DistributedOptimizer"])


def keyword_problems(keywords: list[Shown]) -> list[str]:
    return [f"{s.where}: {s.target}(...) takes no {s.name}="
            for s in keywords if s.name not in accepted_keywords(s.target)]


def test_docs_show_commands_and_calls():
    # The readers below found nothing would make both checks pass vacuously.
    assert len(shown(shown_flags)) > 50 and len(shown(shown_keywords)) > 30


def test_every_documented_flag_exists():
    assert flag_problems(shown(shown_flags)) == []


def test_every_documented_keyword_exists():
    assert keyword_problems(shown(shown_keywords)) == []


# A document with one mistake of each kind, beside correct ones: the checks
# must name exactly the mistakes, so they can fail.
WRONG = """
    mpirun -np 2 python -m benchmarks.exchange --model resnet50 \\
        --steps 5 --no-such-flag
    C="python examples/pytorch_digits.py --lr 0.1"
    $C --epochs 3 --betta 0.5

```python
opt = hvd.DistributedOptimizer(opt, compression=ScaleCom(model, ratio=0.01, betta=0.5),
                               named_parameters=model.named_parameters())
hsc.DistributedOptimizer(opt, compression=c, process_sets=ps)
```
"""


def test_the_checks_catch_a_wrong_flag_and_a_wrong_keyword():
    assert flag_problems(shown_flags(WRONG, "wrong.md")) == [
        "wrong.md:2: benchmarks.exchange has no --no-such-flag",
        "wrong.md:5: examples/pytorch_digits.py has no --betta"]
    assert keyword_problems(shown_keywords(WRONG, "wrong.md")) == [
        "wrong.md:8: ScaleCom(...) takes no betta=",
        "wrong.md:10: hsc.DistributedOptimizer(...) takes no process_sets="]


def test_inline_commands_end_with_their_code_span():
    # Prose after a command in backticks is not the command's.
    text = "Run `python -m horovod_scalecom.check --kinds ring`, or mpirun --oversubscribe."
    assert [s.name for s in shown_flags(text, "x.md")] == ["kinds"]
    wrapped = "as in `python -m benchmarks.core_step --sizes 1e6\n  25e6 --threads 1`"
    assert [s.name for s in shown_flags(wrapped, "x.md")] == ["sizes", "threads"]
    assert re.fullmatch(r"x\.md:1", shown_flags(wrapped, "x.md")[1].where)


# docs/api.md's headings: "### `Name(parameters)`" under "## ...: `module`".
# Each must list the real parameters, in order, with the real defaults where
# the heading gives a literal one.
API_SIGNATURES = """
import importlib, inspect, json, sys
out = {}
for spec in sys.argv[1:]:
    module, name = spec.rsplit(":", 1)
    params = []
    for p in inspect.signature(getattr(importlib.import_module(module), name)).parameters.values():
        if p.kind == p.VAR_POSITIONAL and p.name.startswith("_"):
            continue                     # private extras (a hook's *_other), not documented
        shown = {p.VAR_KEYWORD: "**", p.VAR_POSITIONAL: "*"}.get(p.kind, "") + p.name
        default = None if p.default is p.empty else repr(p.default)
        params.append([shown, default])
    out[spec] = params
print("SIGNATURES " + json.dumps(out))
"""


def api_headings(text: str) -> list[tuple[str, str, list[tuple[str, str | None]]]]:
    """(heading, "module:name", [(parameter, literal default or None)]) per
    call shown in an api.md heading."""
    import ast
    out, module = [], None
    for line in text.splitlines():
        section = re.match(r"^## .*`(horovod_scalecom[\w.]*)`", line)
        if line.startswith("## "):
            module = section.group(1) if section else None
        if not line.startswith("### "):
            continue
        for call in re.finditer(r"`((?:\w+\.)*)(\w+)\(([^`]*)\)", line):
            prefix, name, args = call.group(1).rstrip("."), call.group(2), call.group(3)
            if prefix.startswith("horovod_scalecom"):
                where = prefix
            elif module:
                where = f"{module}.{prefix}" if prefix else module
            else:
                continue                        # `stats()` and the like: a method
            params = []
            for arg in (a.strip() for a in args.split(",")):
                if arg in ("", "*") or "..." in arg:
                    continue
                pname, _, default = arg.partition("=")
                try:
                    literal = repr(ast.literal_eval(default)) if default else None
                except (ValueError, SyntaxError):
                    literal = None              # hvd.Average, ScaleCom(...): not compared
                params.append((pname.strip(), literal))
            out.append((line, f"{where}:{name}", params))
    return out


def test_api_md_headings_match_the_signatures():
    headings = api_headings((ROOT / "docs" / "api.md").read_text())
    assert len(headings) >= 12
    real: dict[str, list] = {}
    specs = sorted({spec for _, spec, _ in headings})
    for group in ([s for s in specs if s.startswith("horovod_scalecom.tensorflow")],
                  [s for s in specs if not s.startswith("horovod_scalecom.tensorflow")]):
        run = subprocess.run([sys.executable, "-c", API_SIGNATURES, *group], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
        line = [x for x in run.stdout.splitlines() if x.startswith("SIGNATURES ")]
        assert run.returncode == 0 and line, run.stderr[-2000:]
        real.update(json.loads(line[0][11:]))
    problems = []
    for heading, spec, params in headings:
        names = [p for p, _ in params]
        if names != [p for p, _ in real[spec]]:
            problems.append(f"{spec}: api.md shows {names}, the code has {real[spec]}")
        defaults = dict(real[spec])
        problems += [f"{spec}: api.md shows {p}={d}, the code's default is {defaults.get(p)}"
                     for p, d in params if d is not None and defaults.get(p) != d]
    assert problems == []
