"""Builds horovod_scalecom and its C++ extensions.

The framework-free core in csrc/core is compiled into each framework's
binding: horovod_scalecom._torch_ops when torch is importable at build time.
Build with the framework already installed (pip install --no-build-isolation).
"""

import glob
import os

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
    ext = CppExtension(
        name="horovod_scalecom._torch_ops",
        sources=CORE_SOURCES + ["csrc/torch/ops.cc"],
        depends=CORE_HEADERS,
        extra_compile_args=CXX_FLAGS,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = torch_extension()

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
