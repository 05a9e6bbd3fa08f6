"""What the docs show a user typing: the flags given to this package's
commands and the keywords given to its classes, read from Markdown text.

tests/test_docs.py checks both against the code. Kept apart from the test so
that the test can feed it a deliberately wrong document and see it fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A command of this repository: a module run with -m (the package's, or a
# benchmark's from the checkout), or an example script.
COMMAND = re.compile(r"python[\d.]*\s+-m\s+(horovod_scalecom(?:\.\w+)*|benchmarks\.\w+)"
                     r"|(examples/\w+\.py)")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")
# A shell variable that holds a command: C="python -m ... --a 1"
ASSIGNMENT = re.compile(r"^\s*(\w+)=[\"']?(.*?)[\"']?\s*$")

# The classes whose keywords the docs show, by the name used in the call.
CALLS = ("ScaleComHookState", "ScaleCom", "DistributedOptimizer")
CALL = re.compile(r"(?<![\w.])((?:\w+\.)*)(%s)\(" % "|".join(CALLS))
KEYWORD = re.compile(r"^\s*(\w+)\s*=(?!=)")


@dataclass(frozen=True)
class Shown:
    """One flag or keyword as a doc shows it: where, and to what."""
    where: str          # "README.md:12"
    target: str         # module, script, or "prefix.Class"
    name: str           # flag or keyword, without dashes


def logical_lines(text: str) -> list[tuple[int, str]]:
    """The text's lines with shell continuations (a trailing backslash) and
    inline code spans that wrap onto the next line joined, so that a command
    is one line from its start to its last flag. Numbers are the first line's."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i]
        while i + 1 < len(lines) and (
                line.rstrip().endswith("\\")
                or (not line.lstrip().startswith("```") and line.count("`") % 2 == 1)):
            i += 1
            line = line.rstrip().rstrip("\\") + " " + lines[i].strip()
        out.append((start, line))
        i += 1
    return out


def shown_flags(text: str, source: str) -> list[Shown]:
    """Every --flag given to one of this package's commands in ``text``.

    A command's flags run to the end of its logical line, or to the end of
    the inline code span that holds it. A shell variable assigned a command
    (``C="python -m ..."``) stands for that command where it is used."""
    found: list[Shown] = []
    variables: dict[str, str] = {}
    for number, line in logical_lines(text):
        assigned = ASSIGNMENT.match(line)
        if assigned and COMMAND.search(assigned.group(2)):
            variables[assigned.group(1)] = assigned.group(2)
        for name, value in variables.items():
            line = re.sub(r"\$\{?%s\}?(?!\w)" % name, value, line)
        for command in COMMAND.finditer(line):
            target = command.group(1) or command.group(2)
            rest = line[command.end():]
            tick = rest.find("`")
            if tick >= 0:
                rest = rest[:tick]
            nxt = COMMAND.search(rest)          # the next command has its own flags
            if nxt:
                rest = rest[:nxt.start()]
            for flag in FLAG.finditer(rest):
                found.append(Shown(f"{source}:{number}", target, flag.group(1)))
    return found


def _call_arguments(text: str, start: int) -> list[str] | None:
    """The top-level arguments of the call whose "(" is at ``start``, or None
    when the parenthesis does not close within a few lines (prose)."""
    depth, quote, args, current = 0, "", [], []
    for i in range(start, min(len(text), start + 3000)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth == 1:
                continue
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append("".join(current))
                return args
        elif ch == "," and depth == 1:
            args.append("".join(current))
            current = []
            continue
        current.append(ch)
    return None


def shown_keywords(text: str, source: str) -> list[Shown]:
    """Every keyword argument in a call of ScaleCom, ScaleComHookState or a
    DistributedOptimizer in ``text``, with the call's dotted prefix (``hvd.``
    tells Horovod's optimizer from this package's)."""
    found: list[Shown] = []
    for call in CALL.finditer(text):
        args = _call_arguments(text, call.end() - 1)
        if args is None:
            continue
        number = text.count("\n", 0, call.start()) + 1
        for arg in args:
            keyword = KEYWORD.match(arg)
            if keyword:
                found.append(Shown(f"{source}:{number}", call.group(1) + call.group(2),
                                   keyword.group(1)))
    return found
