"""How csrc/cuda is compiled into libscalecom_cuda.so: one nvcc command shared
by setup.py and the tests, after a check that horovod_scalecom.cuda's ctypes
table says what the header declares (stdlib only, so setup.py can load it by path)."""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
HEADERS = sorted(p for pattern in ("*.h", "*.cuh") for p in (ROOT / "csrc" / "cuda").glob(pattern))
HEADER = ROOT / "csrc" / "cuda" / "scalecom_cuda.h"
# Ampere and Hopper; HOROVOD_SCALECOM_CUDA_ARCHS (e.g. "80;90;100") overrides in setup.py.
ARCHS = ("80", "90")


# The header's C types as ctypes declares them (const and names left out);
# any other pointer is a c_void_p.
_C_TYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t,
            "float": ctypes.c_float, "size_t*": ctypes.POINTER(ctypes.c_size_t),
            "void**": ctypes.POINTER(ctypes.c_void_p), "char*": ctypes.c_char_p}


def _ctype(declaration: str):
    """ "const float* memory" -> c_void_p."""
    words = declaration.replace("*", " * ").split()
    ctype = "".join(w for w in words[:-1] if w != "const")
    if ctype in _C_TYPES:
        return _C_TYPES[ctype]
    if ctype.endswith("*") and not ctype.endswith("**"):
        return ctypes.c_void_p
    raise ValueError(f"{HEADER.name}: no ctypes type for {declaration!r}")


def header_signatures(header: str) -> dict[str, tuple]:
    """{name: (restype, argtypes)} of every scalecom_cuda_ prototype in the header."""
    found = re.findall(r"^((?:const )?\w+\*?) scalecom_cuda_(\w+)\(([^)]*)\);", header,
                       re.M)
    table = {name: (_ctype(f"{ret} r"), [_ctype(p) for p in params.split(",")])
             for ret, name, params in found}
    declared = re.findall(r"^[^/\n]*\bscalecom_cuda_(\w+)\(", header, re.M)
    if sorted(declared) != sorted(table):
        raise ValueError(f"{HEADER.name}: prototypes not of the form "
                         f"`int scalecom_cuda_NAME(...);`: {sorted(set(declared) - set(table))}")
    return table


def check_signatures() -> None:
    """ValueError unless horovod_scalecom.cuda.SIGNATURES (ctypes) and the
    header's prototypes name the same functions with the same types."""
    spec = importlib.util.spec_from_file_location("_scalecom_cuda", ROOT / "horovod_scalecom" /
                                                  "cuda.py")
    cuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda)
    header = header_signatures(HEADER.read_text())
    wrong = sorted(name for name in {*header, *cuda.SIGNATURES}
                   if header.get(name) != cuda.SIGNATURES.get(name))
    if wrong:
        raise ValueError(f"horovod_scalecom/cuda.py's SIGNATURES and {HEADER.name} disagree on "
                         f"{wrong}: change both")


def nvcc_command(output: Path, archs=ARCHS, shared: bool = True) -> list[str]:
    """--fmad=false: no contraction of m + beta * g into an FMA, so the
    kernels round as the CPU core and the NumPy reference do."""
    check_signatures()
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH")
    cmd = [nvcc, "-std=c++17", "-O3", "--fmad=false", "-Xcompiler", "-fPIC",
           "-Werror", "all-warnings"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd + (["-shared"] if shared else ["-c"]) + [str(s) for s in SOURCES] + ["-o", str(output)]


def up_to_date(output: Path) -> bool:
    return output.exists() and all(output.stat().st_mtime >= s.stat().st_mtime
                                   for s in SOURCES + HEADERS)
