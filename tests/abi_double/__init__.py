"""Builds the host double of the CUDA kernels' C ABI (host_abi.cc, see its
header) and, over it, csrc/torch/cuda_ops.cc as torch.ops.scalecom_host: the
package's CUDA-dispatch code run on CPU tensors."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOUBLE_SOURCES = [ROOT / "csrc/core/scalecom.cc", ROOT / "tests/abi_double/host_abi.cc"]
TORCH_HOST_SOURCES = [ROOT / "csrc/torch/cuda_ops.cc"]
HEADERS = [ROOT / "csrc/core/scalecom.h", ROOT / "csrc/cuda/scalecom_cuda.h",
           ROOT / "csrc/torch/schema.h"]
TORCH_HOST_NAME = "libscalecom_torch_host.so"
# One build per test session; torch's headers make the op library a minute's compile.
CACHE = ROOT / "build" / "abi_double"


def _gxx() -> str:
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ is not on PATH")
    return gxx


def _stale(output: Path, sources: list[Path]) -> bool:
    return not output.exists() or any(s.stat().st_mtime > output.stat().st_mtime
                                      for s in sources + HEADERS)


def build_host_double() -> Path:
    """libscalecom_cuda_host_double.so: the C ABI on host memory (for ctypes
    and the ring engine), rebuilt only when its sources change."""
    CACHE.mkdir(parents=True, exist_ok=True)
    lib = CACHE / "libscalecom_cuda_host_double.so"
    if _stale(lib, DOUBLE_SOURCES):
        subprocess.run([_gxx(), "-std=c++17", "-O2", "-fPIC", "-shared", "-fopenmp",
                        "-ffp-contract=off", *map(str, DOUBLE_SOURCES), "-o", str(lib)],
                       check=True, timeout=300)
    return lib


def build_torch_host_ops(double_lib: Path) -> Path:
    """cuda_ops.cc compiled with SCALECOM_HOST_DOUBLE and linked against
    `double_lib`, beside it: load it with torch.ops.load_library and call
    torch.ops.scalecom_host.*. Against the installed torch's headers and ABI."""
    import torch
    from torch.utils import cpp_extension

    lib = Path(double_lib).with_name(TORCH_HOST_NAME)
    if not _stale(lib, TORCH_HOST_SOURCES + [Path(double_lib), Path(torch.__file__)]):
        return lib
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    torch_lib = str(Path(torch.__file__).parent / "lib")
    tmp = lib.with_suffix(".tmp.so")
    subprocess.run([_gxx(), "-std=c++20", "-O1", "-fPIC", "-shared", "-DSCALECOM_HOST_DOUBLE",
                    f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes,
                    *map(str, TORCH_HOST_SOURCES), str(double_lib),
                    f"-L{torch_lib}", "-lc10", "-ltorch_cpu",
                    f"-Wl,-rpath,{torch_lib}", f"-Wl,-rpath,{Path(double_lib).parent}",
                    "-o", str(tmp)], check=True, timeout=600)
    tmp.replace(lib)
    return lib


def build_for_workers() -> Path:
    """What an mpirun worker's --kernels-lib names: the host double, with
    the torch op library over it built beside it now, since the ranks only
    load it (build=False below) and must not build it at once."""
    lib = build_host_double()
    build_torch_host_ops(lib)
    return lib


def load_torch_host_ops(double_lib: Path, build: bool = True):
    """torch.ops.scalecom_host over `double_lib`, loaded once per process;
    built first if needed, unless ``build`` is False."""
    import torch

    if not hasattr(torch.ops.scalecom_host, "select_topk"):
        lib = (build_torch_host_ops(double_lib) if build
               else Path(double_lib).with_name(TORCH_HOST_NAME))
        torch.ops.load_library(str(lib))
    return torch.ops.scalecom_host
