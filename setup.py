"""Builds horovod_scalecom and its C++ extensions.

The framework-free core in csrc/core is compiled into each framework's
binding: horovod_scalecom._torch_ops when torch is importable at build time,
horovod_scalecom._tf_ops (TensorFlow custom ops) when tensorflow is, and the
MPI ring allreduce horovod_scalecom._ring when Open MPI's mpicxx is found.
Build with the framework already installed (pip install --no-build-isolation).
"""

import glob
import os
import shutil
import subprocess

from setuptools import find_packages, setup

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
        depends=CORE_HEADERS,
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
        depends=CORE_HEADERS,
        language="c++",
        extra_compile_args=CXX_FLAGS + tf.sysconfig.get_compile_flags(),
        extra_link_args=["-fopenmp"] + tf.sysconfig.get_link_flags(),
    )]


def ring_extension():
    """The compressed ring allreduce (path B): plain CPython + MPI, no framework."""
    mpicxx = shutil.which("mpicxx")
    if mpicxx is None:
        print("setup.py: mpicxx not found (install libopenmpi-dev); skipping horovod_scalecom._ring")
        return []
    from setuptools import Extension
    show = lambda what: subprocess.check_output([mpicxx, f"--showme:{what}"], text=True).split()  # noqa: E731
    return [Extension(
        name="horovod_scalecom._ring",
        sources=CORE_SOURCES + ["csrc/ring/ring.cc", "csrc/ring/module.cc"],
        depends=CORE_HEADERS + ["csrc/ring/ring.h"],
        language="c++",
        extra_compile_args=CXX_FLAGS + ["-std=c++17"] + show("compile"),
        extra_link_args=["-fopenmp"] + show("link"),
    )]


ext_modules, cmdclass = torch_extension()
ext_modules += tensorflow_extension()
ext_modules += ring_extension()

setup(
    name="horovod-scalecom",
    version="0.1.0",
    description="ScaleCom gradient compression (CLT-k + low-pass memory) for Horovod",
    packages=find_packages(include=["horovod_scalecom", "horovod_scalecom.*"]),
    python_requires=">=3.9",
    install_requires=["numpy"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
