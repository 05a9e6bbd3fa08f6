"""Builds horovod_scalecom and its C++ extensions.

The framework-free core in csrc/core is compiled into each framework's
binding: horovod_scalecom._torch_ops when torch is importable at build time,
horovod_scalecom._tf_ops (TensorFlow custom ops) when tensorflow is, and the
MPI ring allreduce horovod_scalecom._ring when Open MPI's mpicxx is found,
and the CUDA kernels (libscalecom_cuda.so) when nvcc is found and torch or
tensorflow was built with CUDA: the torch and TensorFlow ops then link it
and register GPU kernels with their framework's dispatch.
Build with the framework already installed (pip install --no-build-isolation).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CORE_SOURCES = sorted(glob.glob("csrc/core/*.cc"))
CORE_HEADERS = sorted(glob.glob("csrc/core/*.h"))
# -ffp-contract=off: no fused multiply-add, so m + beta * g rounds exactly as
# the NumPy reference does (bitwise equality is tested).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-Wall"]


def torch_extension():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("setup.py: torch is not installed; skipping horovod_scalecom._torch_ops")
        return [], {}

    class BuildExt(BuildExtension):
        """torch's build_ext adds its own flags (-std=c++20 among them) to every
        extension; the TensorFlow ops must keep TensorFlow's, so they are built
        by plain setuptools after the torch ones."""

        def build_extensions(self):
            plain = [e for e in self.extensions if not e.name.endswith("_torch_ops")]
            self.extensions = [e for e in self.extensions if e not in plain]
            super().build_extensions()
            self.compiler._compile = type(self.compiler)._compile.__get__(self.compiler)
            for ext in plain:
                self.build_extension(ext)
            self.extensions += plain

    ext = CppExtension(
        name="horovod_scalecom._torch_ops",
        sources=CORE_SOURCES + ["csrc/torch/ops.cc"],
        depends=CORE_HEADERS + ["csrc/torch/schema.h"],
        extra_compile_args=CXX_FLAGS,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExt.with_options(use_ninja=False)}


def tensorflow_extension():
    """The same core as TensorFlow custom ops, loaded with tf.load_op_library."""
    try:
        import tensorflow as tf
    except ImportError:
        print("setup.py: tensorflow is not installed; skipping horovod_scalecom._tf_ops")
        return []
    from setuptools import Extension
    return [Extension(
        name="horovod_scalecom._tf_ops",
        sources=CORE_SOURCES + ["csrc/tensorflow/ops.cc"],
        depends=CORE_HEADERS + ["csrc/tensorflow/checks.h"],
        language="c++",
        extra_compile_args=CXX_FLAGS + tf.sysconfig.get_compile_flags(),
        extra_link_args=["-fopenmp"] + tf.sysconfig.get_link_flags(),
    )]


def ring_extension():
    """The compressed ring allreduce (the ScaleCom ring): pybind11 + MPI, no framework."""
    mpicxx = shutil.which("mpicxx")
    if mpicxx is None:
        print("setup.py: mpicxx not found (install libopenmpi-dev); skipping horovod_scalecom._ring")
        return []
    try:
        import pybind11
    except ImportError:
        print("setup.py: pybind11 is not installed (pip install pybind11; scripts/setup.sh pins "
              "it); skipping horovod_scalecom._ring")
        return []
    from setuptools import Extension
    show = lambda what: subprocess.check_output([mpicxx, f"--showme:{what}"], text=True).split()  # noqa: E731
    return [Extension(
        name="horovod_scalecom._ring",
        sources=CORE_SOURCES + ["csrc/ring/ring.cc", "csrc/ring/exchange.cc",
                                "csrc/ring/buffers.cc", "csrc/ring/share.cc",
                                "csrc/ring/module.cc"],
        depends=CORE_HEADERS + ["csrc/ring/ring.h", "csrc/ring/buffers.h",
                                "csrc/cuda/scalecom_cuda.h"],
        include_dirs=[pybind11.get_include()],
        language="c++",
        extra_compile_args=CXX_FLAGS + ["-std=c++17", "-fvisibility=hidden"] + show("compile"),
        extra_link_args=["-fopenmp"] + show("link"),
    )]


def framework_has_cuda() -> str | None:
    """Which installed framework was built with CUDA, if any."""
    try:
        import torch
        if torch.version.cuda:
            return f"torch {torch.__version__}"
    except ImportError:
        pass
    try:
        import tensorflow as tf
        if tf.test.is_built_with_cuda():
            return f"tensorflow {tf.__version__}"
    except ImportError:
        pass
    return None


def _cuda_build_module():
    spec = importlib.util.spec_from_file_location(
        "cuda_build", os.path.join(HERE, "horovod_scalecom", "cuda_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_archs() -> list[str] | None:
    """The GPU architectures to build libscalecom_cuda.so for, or None to skip it.
    Built when nvcc is found and torch or tensorflow has CUDA.
    HOROVOD_SCALECOM_CUDA=0 skips it, =1 makes a missing nvcc an error;
    HOROVOD_SCALECOM_CUDA_ARCHS="80;90" picks the architectures."""
    wanted = os.environ.get("HOROVOD_SCALECOM_CUDA", "auto")
    if wanted == "0":
        return None
    framework = framework_has_cuda()
    if wanted != "1" and framework is None:
        print("setup.py: no CUDA build of torch or tensorflow; skipping libscalecom_cuda.so")
        return None
    if shutil.which("nvcc") is None:
        if wanted == "1":
            raise SystemExit("setup.py: HOROVOD_SCALECOM_CUDA=1 but nvcc is not on PATH")
        print(f"setup.py: {framework} has CUDA but nvcc is not on PATH; skipping "
              "libscalecom_cuda.so (GPU gradients will be refused with a message)")
        return None
    default = ";".join(_cuda_build_module().ARCHS)
    return os.environ.get("HOROVOD_SCALECOM_CUDA_ARCHS", default).split(";")


def build_cuda_library(package_dir: str, archs: list[str]) -> None:
    """libscalecom_cuda.so (csrc/cuda, the C ABI horovod_scalecom.cuda loads)
    next to the extensions; rebuilt only when its sources or archs changed."""
    cuda_build = _cuda_build_module()
    cuda_build.check_signatures()   # horovod_scalecom.cuda's ctypes table against the header
    output = Path(package_dir) / "libscalecom_cuda.so"
    stamp = output.with_suffix(".archs")
    if cuda_build.up_to_date(output) and stamp.exists() and stamp.read_text() == ";".join(archs):
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"setup.py: nvcc -> {output} (sm_{', sm_'.join(archs)})")
    subprocess.check_call(cuda_build.nvcc_command(output, archs))
    stamp.write_text(";".join(archs))


# The op libraries that register GPU kernels over libscalecom_cuda.so, and the
# sources that do it.
GPU_KERNELS = {"horovod_scalecom._torch_ops": "csrc/torch/cuda_ops.cc",
               "horovod_scalecom._tf_ops": "csrc/tensorflow/gpu_kernels.cc"}


def with_cuda_library(build_ext_class, archs):
    """First the CUDA library, then the extensions; the torch and TensorFlow
    ops then get their GPU kernels, linked against that library (found beside
    them). A build without CUDA removes a library left by an earlier build,
    and the op libraries are rebuilt whenever they change between the two
    variants."""
    class BuildExtWithCuda(build_ext_class):
        def run(self):
            package_dir = os.path.dirname(self.get_ext_fullpath("horovod_scalecom._ring"))
            library = Path(package_dir) / "libscalecom_cuda.so"
            if archs is not None:
                build_cuda_library(package_dir, archs)
            else:
                for stale in (library, library.with_suffix(".archs")):
                    stale.unlink(missing_ok=True)
            for ext in self.extensions:
                if ext.name in GPU_KERNELS:
                    self._add_gpu_kernels(ext, package_dir, library)
            super().run()

        def _add_gpu_kernels(self, ext, package_dir, library):
            # The stamp is rewritten only when the variant changes: then it is newer
            # than the op library built before, which setuptools rebuilds.
            variant = Path(package_dir) / f"{ext.name.rsplit('.', 1)[1]}.variant"
            wanted = "cuda" if archs is not None else "cpu"
            if not variant.exists() or variant.read_text() != wanted:
                variant.parent.mkdir(parents=True, exist_ok=True)
                variant.write_text(wanted)
            ext.depends = ext.depends + [str(variant)]
            if archs is None or GPU_KERNELS[ext.name] in ext.sources:
                return
            ext.sources = ext.sources + [GPU_KERNELS[ext.name]]
            ext.depends = ext.depends + ["csrc/cuda/scalecom_cuda.h", str(library)]
            ext.library_dirs = ext.library_dirs + [package_dir]
            ext.libraries = ext.libraries + ["scalecom_cuda"]
            ext.extra_link_args = ext.extra_link_args + ["-Wl,-rpath,$ORIGIN"]
            ext.define_macros = ext.define_macros + [("SCALECOM_WITH_CUDA", "1")]
    return BuildExtWithCuda


ext_modules, cmdclass = torch_extension()
ext_modules += tensorflow_extension()
ext_modules += ring_extension()
cmdclass["build_ext"] = with_cuda_library(cmdclass.get("build_ext", build_ext), cuda_archs())

setup(
    name="horovod-scalecom",
    version="0.1.0",
    description="ScaleCom gradient compression (CLT-k + low-pass memory) for Horovod",
    license="Apache-2.0",       # as Horovod's; the full text is LICENSE
    # The library only: benchmarks/ (and tests/, examples/) stay in the checkout.
    packages=find_packages(include=["horovod_scalecom", "horovod_scalecom.*"]),
    python_requires=">=3.9",
    install_requires=["numpy"],
    # Optional: the DDP integrations; for a checkout's benchmarks/, plots and the
    # convergence study's data sets.
    extras_require={
        "plots": ["matplotlib"],
        "study": ["scikit-learn", "mnist1d"],
        # The DDP hook where users train (docs/usage.md). scripts/setup.sh pins
        # the tested versions (and pyarrow < 20 beside TensorFlow's numpy 1).
        "lightning": ["lightning>=2.4"],
        "accelerate": ["accelerate>=1.0"],
        "ray": ["ray[train]>=2.40"],
    },
    package_data={"horovod_scalecom": ["libscalecom_cuda.so"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
